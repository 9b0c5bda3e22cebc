"""BasicSR 1.4.2's own code, importable for the benchmarks' baseline rows, from its PyPI sdist.

    from basicsr_142 import load_basicsr
    bsr = load_basicsr()                  # or load_basicsr("/path/basicsr-1.4.2.tar.gz" or an extracted tree)
    bsr.DiffJPEG, bsr.USMSharp, bsr.RealESRGANDataset, bsr.RealESRGANModel, bsr.degradations, ...
    print(bsr.describe())                 # where the code came from and every shim applied

Where the code comes from, first found:
1. the `source` argument, else $FASTSR_BASICSR: the sdist (`basicsr-1.4.2.tar.gz`), its extracted tree
   (`basicsr-1.4.2/`, holding `basicsr/`) or the folder holding either (for a machine without network);
2. benchmarks/.cache/basicsr-1.4.2/ (extracted before), or benchmarks/.cache/basicsr-1.4.2.tar.gz;
3. `pip download --no-deps --no-binary :all: basicsr==1.4.2 -d benchmarks/.cache` (the sdist, not a wheel),
   extracted there. benchmarks/.cache/ is git-ignored.
The tree must say `__version__ = '1.4.2'` in basicsr/version.py; the sdist's SHA-256 is reported.

Nothing of BasicSR is installed or edited, and `basicsr/__init__.py` is never run: it imports every
architecture, loss, metric and model and may try to build BasicSR's CUDA ops. Only these modules are
imported, from the tree, unmodified: basicsr.utils (its own `__init__`, which imports only basicsr/utils/*),
basicsr.data.degradations, basicsr.data.transforms, basicsr.data.realesrgan_dataset,
basicsr.utils.img_process_util, basicsr.utils.diffjpeg, basicsr.losses.loss_util and
basicsr.models.{base_model, lr_scheduler, sr_model, srgan_model, realesrgan_model}.

The shims (each is listed by `describe()`, which the benchmarks print with their results):
- stub packages: `basicsr`, `basicsr.data`, `basicsr.models`, `basicsr.archs`, `basicsr.losses`,
  `basicsr.metrics` are registered as empty packages whose `__path__` is the tree's folder, so their
  modules import without their `__init__`. sr_model.py imports three names from them at module level,
  `build_network`, `build_loss` and `calculate_metric`; the stubs define them as functions that raise if
  called (feed_data never calls them: they build networks and losses in `__init__` and score validation);
- `torchvision.transforms.functional_tensor` (removed in torchvision 0.17; degradations.py imports
  `rgb_to_grayscale` from it): where it does not import, a module with `rgb_to_grayscale =
  torchvision.transforms.functional.rgb_to_grayscale` (the public function, which calls the same
  implementation for tensors);
- `filter2D` as realesrgan_model.py calls it, where reflect padding keeps a channels-last layout (newer torch):
  its input made contiguous first, as torch 1.x's `F.pad` returned it, since BasicSR's filter2D then
  `.view`s it; feed_data hands it DiffJPEG's output (a permute). basicsr.utils.img_process_util.filter2D
  itself is unchanged; the values are too;
- on a machine without CUDA, `cpu_cuda_shim()`: a context manager during which `torch.Tensor.cuda` returns
  the tensor itself (on the CPU). RealESRGANModel's training-pair queue is allocated with
  `torch.zeros(...).cuda()` in `_dequeue_and_enqueue`; the benchmark runs `feed_data` inside it on the CPU.
  (RealESRGANModel.__init__, with its `DiffJPEG(...).cuda()` and `USMSharp().cuda()`, is never run: it
  builds the networks; the benchmark's stand-in object builds those two modules on its device.)

Needs: OpenCV (`pip install opencv-python-headless`: BasicSR imports cv2; fastsr itself does not depend on
it), SciPy, torchvision, tqdm. Where something is missing `load_basicsr` raises `BasicSRUnavailable` with one
line saying what to install; `missing()` returns that line instead of raising.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import subprocess
import sys
import tarfile
import types
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "1.4.2"
ENV = "FASTSR_BASICSR"
CACHE = Path(__file__).resolve().parent / ".cache"
SDIST = f"basicsr-{VERSION}.tar.gz"
TREE = f"basicsr-{VERSION}"
STUB_PACKAGES = ("basicsr", "basicsr.data", "basicsr.models", "basicsr.archs", "basicsr.losses", "basicsr.metrics")
MODULES = ("basicsr.utils", "basicsr.data.degradations", "basicsr.data.transforms", "basicsr.utils.img_process_util",
           "basicsr.utils.diffjpeg", "basicsr.data.realesrgan_dataset", "basicsr.models.realesrgan_model")


class BasicSRUnavailable(RuntimeError):
    """BasicSR 1.4.2 cannot be loaded here; the message is one line saying what to install or fetch."""


@dataclass
class BasicSR:
    """The loaded modules and classes, with the provenance and the shims applied."""

    root: Path  # the tree holding basicsr/
    sdist_sha256: str | None
    shims: list[str] = field(default_factory=list)
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    def __getattr__(self, name):
        short = {m.rsplit(".", 1)[-1]: mod for m, mod in self.__dict__.get("modules", {}).items()}
        if name in short:
            return short[name]
        for mod in short.values():
            if name in getattr(mod, "__dict__", {}) and not name.startswith("_"):
                return mod.__dict__[name]
        raise AttributeError(name)

    def describe(self) -> str:
        """Lines saying where the code came from and every shim applied."""
        sha = f", sdist SHA-256 {self.sdist_sha256}" if self.sdist_sha256 else ""
        lines = [(f"BasicSR {VERSION} from its PyPI sdist, unmodified: {self.root}{sha}; basicsr/__init__.py not run; "
                  f"modules imported: {', '.join(MODULES[1:])} (and what they import)"),
                 "BasicSR shims:"]
        return "\n".join(lines + [f"  - {s}" for s in self.shims])


def missing() -> str | None:
    """Why BasicSR 1.4.2 cannot be loaded here (one line), or None where it can."""
    try:
        load_basicsr()
    except BasicSRUnavailable as err:
        return str(err)
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as tar:
        top = {name.split("/", 1)[0] for name in tar.getnames()}
        if top != {TREE}:
            raise BasicSRUnavailable(f"{sdist}: not the basicsr {VERSION} sdist (top folders {sorted(top)})")
        if not (into / TREE / "basicsr").is_dir():
            into.mkdir(parents=True, exist_ok=True)
            tar.extractall(into, filter="data")
    return into / TREE


def _tree_of(path: Path) -> tuple[Path, str | None] | None:
    """(the tree holding basicsr/, the sdist's hash if one was used) for a path given or cached, or None."""
    path = path.expanduser()
    if path.is_file() and path.name.endswith(".tar.gz"):
        return _extract(path, CACHE), _sha256(path)
    for tree in (path, path / TREE):
        if (tree / "basicsr" / "version.py").is_file():
            sdist = tree.parent / SDIST
            return tree, _sha256(sdist) if sdist.is_file() else None
    if (path / SDIST).is_file():
        return _extract(path / SDIST, CACHE), _sha256(path / SDIST)
    return None


def locate(source: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """The extracted tree (and the sdist's hash), from `source`, $FASTSR_BASICSR, the cache or pip download."""
    given = source or os.environ.get(ENV)
    if given:
        found = _tree_of(Path(given))
        if found is None:
            raise BasicSRUnavailable(f"{given}: holds neither {SDIST} nor an extracted {TREE}/basicsr "
                                     f"(from {'the argument' if source else '$' + ENV})")
        return found
    found = _tree_of(CACHE)
    if found:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"basicsr=={VERSION}",
           "-d", str(CACHE)]
    print(f"fetching BasicSR {VERSION}'s sdist: {' '.join(cmd[2:])}", flush=True)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode or not (CACHE / SDIST).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BasicSRUnavailable(f"could not fetch BasicSR {VERSION}'s sdist ({tail[0]}); run `pip download --no-deps "
                                 f"--no-binary :all: basicsr=={VERSION} -d {CACHE}` where there is network, or set "
                                 f"${ENV} to the sdist or its extracted tree")
    return _extract(CACHE / SDIST, CACHE), _sha256(CACHE / SDIST)


def _check_requirements() -> None:
    for module, install in (("cv2", "opencv-python-headless"), ("scipy", "scipy"), ("torchvision", "torchvision"),
                            ("tqdm", "tqdm")):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise BasicSRUnavailable(f"BasicSR {VERSION} needs {module}: pip install {install} ({err})") from err


def _stub_unused(name: str):
    def unused(*args, **kwargs):
        raise RuntimeError(f"{name} is a stub of benchmarks/basicsr_142.py (BasicSR's package __init__ is not run)")
    unused.__name__ = name
    return unused


_LOADED: BasicSR | None = None


def load_basicsr(source: str | os.PathLike | None = None) -> BasicSR:
    """Import BasicSR 1.4.2's modules (the module docstring lists them and the shims); once per process."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    _check_requirements()
    root, sha = locate(source)
    version = (root / "basicsr" / "version.py").read_text()
    if f"__version__ = '{VERSION}'" not in version:
        raise BasicSRUnavailable(f"{root}: basicsr/version.py is not {VERSION}")
    present = sys.modules.get("basicsr")
    if present is not None and Path(getattr(present, "__path__", [""])[0]).resolve() != (root / "basicsr").resolve():
        raise BasicSRUnavailable(f"another basicsr is imported already ({present}); run without it")
    shims = []
    for name in STUB_PACKAGES:
        if name in sys.modules:
            continue
        stub = types.ModuleType(name, f"stub of benchmarks/basicsr_142.py: {name}'s __init__ is not run")
        stub.__path__ = [str(root / Path(*name.split("."))) ]
        stub.__file__ = None
        sys.modules[name] = stub
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, stub)
    sys.modules["basicsr.archs"].build_network = _stub_unused("build_network")
    sys.modules["basicsr.losses"].build_loss = _stub_unused("build_loss")
    sys.modules["basicsr.metrics"].calculate_metric = _stub_unused("calculate_metric")
    shims.append(f"stub packages {', '.join(STUB_PACKAGES)} (__path__ set, __init__ not run); "
                 "basicsr.archs.build_network, basicsr.losses.build_loss, basicsr.metrics.calculate_metric are "
                 "stubs that raise if called (imported by sr_model.py, unused by feed_data)")
    try:
        importlib.import_module("torchvision.transforms.functional_tensor")
    except ImportError:
        import torchvision
        import torchvision.transforms.functional as tvf

        ft = types.ModuleType("torchvision.transforms.functional_tensor",
                              "shim of benchmarks/basicsr_142.py for BasicSR 1.4.2 on torchvision >= 0.17")
        ft.rgb_to_grayscale = tvf.rgb_to_grayscale
        sys.modules[ft.__name__] = ft
        shims.append(f"torchvision.transforms.functional_tensor.rgb_to_grayscale -> "
                     f"torchvision.transforms.functional.rgb_to_grayscale (torchvision {torchvision.__version__} "
                     f"has no functional_tensor)")
    modules = {}
    try:
        for name in MODULES:
            modules[name] = importlib.import_module(name)
    except ImportError as err:
        raise BasicSRUnavailable(f"BasicSR {VERSION}'s {name} does not import: {err}; install what it names") from err
    _contiguous_filter2d_shim(modules, shims)
    _LOADED = BasicSR(root, sha, shims, modules)
    return _LOADED


def _contiguous_filter2d_shim(modules: dict, shims: list[str]) -> None:
    """Where reflect padding keeps a channels-last layout (newer torch), realesrgan_model's filter2D gets its
    input made contiguous first: as torch 1.x's F.pad returned it, so BasicSR's `img.view(1, b * c, ph, pw)` works.
    feed_data hands filter2D the output of DiffJPEG (a permute, so channels-last strides) and of F.interpolate
    on it; without this, feed_data fails there with "view size is not compatible with input tensor's size and
    stride". The values are unchanged (contiguous() copies)."""
    import torch
    import torch.nn.functional as F

    probe = F.pad(torch.zeros(1, 4, 4, 3).permute(0, 3, 1, 2), (1, 1, 1, 1), mode="reflect")
    if probe.is_contiguous():
        return
    model = modules["basicsr.models.realesrgan_model"]
    shipped = model.filter2D

    def filter2D(img, kernel):  # BasicSR's name
        return shipped(img.contiguous(), kernel)

    filter2D.shipped = shipped
    model.filter2D = filter2D
    shims.append(f"basicsr.models.realesrgan_model.filter2D(img, kernel) -> BasicSR's filter2D(img.contiguous(), "
                 f"kernel): torch {torch.__version__}'s reflect F.pad keeps the channels-last strides of DiffJPEG's "
                 f"output, and BasicSR's .view(1, b * c, ph, pw) then fails (torch 1.x returned it contiguous)")


@contextlib.contextmanager
def cpu_cuda_shim(bsr: BasicSR | None = None):
    """`torch.Tensor.cuda` returns the tensor itself (on the CPU) while inside; for BasicSR's hard-coded
    `.cuda()` calls (RealESRGANModel's queue) on a machine without CUDA. Records itself in `bsr.shims`."""
    import torch

    if bsr is not None:
        line = ("torch.Tensor.cuda returns the tensor itself while feed_data runs (no CUDA here; "
                "RealESRGANModel._dequeue_and_enqueue allocates its queue with torch.zeros(...).cuda())")
        if line not in bsr.shims:
            bsr.shims.append(line)
    real = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = real


if __name__ == "__main__":
    try:
        print(load_basicsr(sys.argv[1] if len(sys.argv) > 1 else None).describe())
    except BasicSRUnavailable as err:
        sys.exit(f"BasicSR {VERSION} unavailable: {err}")
