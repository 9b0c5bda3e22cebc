#!/usr/bin/env bash
# "It learns": SRCNN and pretrain of the quick start's SRGAN generator (SRResNet, 4 blocks, 32
# channels, MSE), each trained for about 10 minutes on a 2-core CPU on the bundled samples, then
# both scored against bicubic on the held-out photographs (benchmarks/RESULTS.md has the numbers).
# Usage: bash benchmarks/it_learns.sh [OUT_DIR]     (default runs/it_learns)
set -euo pipefail
out=${1:-runs/it_learns}
common=(out_dir="$out" data.source=samples data.hr_crop=64 data.repeat=16 data.workers=0
        data.cache_images=true data.val_images=0 train.save_every=0 train.log_every=13)
time fastsr train recipes/srcnn_x4.yaml name=srcnn "${common[@]}" train.val_every=130 \
    train.steps_pretrain=2470 train.lr=1e-3  # 190 epochs of 13 steps
time fastsr train recipes/srresnet_x4.yaml name=srresnet "${common[@]}" train.val_every=260 \
    model.res_blocks=4 model.channels=32 data.channel_shuffle=true \
    train.steps_pretrain=2600 train.lr=1e-3 train.lr_schedule=cosine  # 200 epochs
fastsr eval --model bicubic --model SRCNN="$out/srcnn/generator.safetensors" \
    --model SRResNet="$out/srresnet/generator.safetensors" --data samples --scale 4 \
    --json "$out/results.json" --pictures "$out/compare"
