"""What the commands (attack.py, sample.py, evaluate.py, poses.py) share: flag types, one-line errors with an exit
status that name the flag whose value is wrong, the device, and output files written all or nothing, never onto
or into an input.

Exit statuses: 2 for a usage error (a bad flag or path, refused before any work), 1 for a failure met
while running (an unreadable photo, broken weights, NaN, out of memory), 130 for Ctrl-C, 143 for SIGTERM.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from plumbing.reading import read_json
from weights import TOY_MODEL, WeightsError, build_network

USAGE, FAILURE, INTERRUPTED, TERMINATED = 2, 1, 130, 143
# Upper limits of the flags that size the tensors, so that a typo is refused instead of exhausting memory.
MAX_FRAMES, MAX_SIDE, MAX_SAMPLE_STEPS = 128, 4096, 1000
MAX_SEED = 2**63 - 1
MAX_NAME_BYTES = 255  # the longest file name common file systems take (temporary names are short)
# --model names that are not paths, even where a folder of that name exists
BUILT_IN_MODELS = ("toy", "tiny", "controlnext", "tiny-controlnext", "cogvideox", "tiny-cogvideox", "wan", "tiny-wan")
MODEL_HELP = ("SVD img2vid: hub repo id or local folder in the official layout, 'toy' (a small SVD trained on a "
              "CPU, 64x64, 8 frames) or 'tiny' (untrained random weights: protects nothing, for tests); "
              "ControlNeXt-SVD-v2: 'controlnext', a local folder with controlnet/, or 'tiny-controlnext'; "
              "CogVideoX-5B-I2V: 'cogvideox', a local folder with transformer/, or 'tiny-cogvideox'; "
              "Wan2.2-TI2V-5B: 'wan', a local folder in its layout, or 'tiny-wan'")


def fail(message, status=USAGE):
    """One line on stderr, then exit with `status`: how the commands refuse bad input and report failures."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(status)


def command(main):
    """Wrap a command's main(argv) so that whatever goes wrong while it runs ends as one line on stderr and
    an exit status, never a traceback. Files are written all or nothing (write_files), so an error or
    Ctrl-C leaves the outputs finished before it and nothing else."""
    @functools.wraps(main)
    def run(argv=None):
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:  # and Ctrl-C raises KeyboardInterrupt again (starting.py quieted it while importing)
            previous = (signal.signal(signal.SIGTERM, terminate),
                        signal.signal(signal.SIGINT, signal.default_int_handler))
        try:
            return main(argv)
        except KeyboardInterrupt:
            fail("interrupted (Ctrl-C); the outputs finished before it are complete, nothing else was written",
                 INTERRUPTED)
        except Terminated:
            fail("terminated (SIGTERM, as Slurm sends at a cancel or the time limit); the outputs finished before "
                 "it are complete, nothing else was written", TERMINATED)
        except (WeightsError, ValueError, OSError, RuntimeError, MemoryError) as e:
            fail(one_line(e), FAILURE)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous[0])
                signal.signal(signal.SIGINT, previous[1])
    return run


class Terminated(Exception):
    """SIGTERM arrived: raised in the main thread, so the command ends as Ctrl-C ends it."""


def terminate(signum, frame):
    raise Terminated


def read_flag(flag, read, *args, status=USAGE):
    """read(*args), the file a flag names read; a ValueError is refused in one line that names the flag."""
    try:
        return read(*args)
    except ValueError as e:
        fail(f"{flag}: {one_line(e)}", status)


@contextlib.contextmanager
def loading(model, condition="--prompt"):
    """Loading a --model: a WeightsError fails in one line (status 1, with weights_hint), a ValueError is refused
    under the condition read while loading (status 2)."""
    try:
        yield
    except WeightsError as e:
        fail(f"{e}{weights_hint(model)}", FAILURE)
    except ValueError as e:
        fail(f"{condition}: {e}")


def one_line(error):
    """An exception's message, first line only (torch's can run to many)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---------------------------------------------------------------- flags
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written; each flag's default said once, unless its help already says it."""

    def _get_help_string(self, action):
        unsaid = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if unsaid or "default" in action.help:
            return action.help
        return action.help + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with HelpFormatter, and a bad flag refused in one line (exit 2) without the usage text."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        fail(f"{message} (see -h)")


def number(text):
    """A flag type: '8/255' or '0.03' -> a finite float."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def number_in(low, high):
    """A flag type: a number (or fraction) from low to high."""
    def parse(text):
        value = number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {value:g}")
        return value
    return parse


def integer(low, high=math.inf):
    """A flag type: an integer from low to high."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return parse


def path(text):
    """A flag type: a file or folder name, never empty ('' would silently mean none, or the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return text


def variant(text):
    """--variant: which weight files to load, '*.fp16.safetensors' for 'fp16', '*.safetensors' for 'none'."""
    return None if text.lower() == "none" else text


def parse_device(name):
    """--device -> a torch.device that exists on this machine."""
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"unknown device {name!r}")
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type not in available:
        fail(f"--device {name}: use cpu, cuda or mps")
    if not available[device.type]():
        fail(f"--device {name} but {device.type} is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(f"--device {name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def default_dtype(device):
    """Model dtype unless --dtype says otherwise: bfloat16 on CUDA, float32 elsewhere."""
    return "bfloat16" if device.type == "cuda" else "float32"


def weights_hint(model):
    """What to add to a weights error for a hub model: how to try the tools without its weights."""
    if model in ("tiny", "toy", "tiny-controlnext", "tiny-cogvideox", "tiny-wan") or Path(model).is_dir():
        return ""
    return ("; to try the tools without it: --model toy (a small trained model that runs on a CPU) "
            "or --model tiny (untrained, for tests)")


# ---------------------------------------------------------------- output files
def file_key(path):
    """What identifies a file: device and inode when it exists (so a link to it is the same file), else its
    absolute path."""
    try:
        stat = Path(path).stat()
        return stat.st_dev, stat.st_ino
    except OSError:
        return str(Path(path).resolve())


def refuse_clashes(planned, inputs):
    """planned: (what it is made from, output path) pairs; inputs: every file and folder the command reads (None
    for a flag not given; files.inputs_of lists them). Refuse, before any work, an output that would overwrite an
    input, that would land inside an input folder (a model, a pose sequence: the next run would read it), or
    that two different sources would both write."""
    inputs = [Path(path) for path in inputs if path]
    folders = [folder.resolve() for folder in inputs if folder.is_dir()]
    files = {file_key(file): file for path in inputs
             for file in (sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])}
    owners = {}
    for source, path in planned:
        if len(Path(path).name.encode()) > MAX_NAME_BYTES:
            fail(f"{Path(path).name[:40]}...: an output file name longer than {MAX_NAME_BYTES} bytes; "
                 "rename the photo or choose another --out")
        key = file_key(path)
        if key in files:
            fail(f"{path} would overwrite the input {files[key]}; choose another --out")
        inside = [folder for folder in folders if Path(path).resolve().is_relative_to(folder)]
        if inside:
            fail(f"{path} would be written inside the input folder {inside[0]}; choose another --out")
        if owners.setdefault(key, source) != source:
            fail(f"{owners[key]} and {source} would both be written to {path}; rename one, or give each its own --out")


def check_writable(folder, may_create=False):
    """Refuse, before any work, a folder the outputs cannot go to. With may_create it may be missing: it is
    created when the first output is written, inside its nearest existing parent."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if existing != folder and not may_create:
        fail(f"no such folder: {folder}")
    if not existing.is_dir():
        fail(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"cannot write to {existing}")


def write_files(files):
    """Write {path: bytes} all or nothing, creating missing folders. Each file goes first to a new
    temporary file beside its target, created exclusively (nothing planted there is followed); all are
    renamed onto their targets only once every one is written and every target is known to be replaceable
    (a folder or a FIFO in a target's place refuses them all). Ctrl-C and SIGTERM wait until it is done."""
    staged = []
    with signals_held():
        try:
            for path, data in files.items():
                path = Path(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".i2vguard-", suffix=".tmp", dir=path.parent)  # any name's length
                staged.append((tmp, path))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o666 & ~umask())  # the permissions a plainly created file gets
            for _, path in staged:
                if path.exists() and not path.is_file():
                    raise OSError(f"{path} is there and is not a file; nothing was written")
            for tmp, path in staged:
                os.replace(tmp, path)
        finally:
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)


@contextlib.contextmanager
def signals_held():
    """Ctrl-C (SIGINT) and SIGTERM acted on only when the block is over, so that it is never left half done:
    while it runs, they are only noted (Python runs every handler in the main thread, whichever thread the
    signal reached, so a handler, unlike a thread's signal mask, holds them all)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []
    previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if noted:
            signal.raise_signal(noted[0])


def umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def json_bytes(value):
    """Strict JSON for a report: infinities and NaN become null (the PSNR of an unchanged photo is infinite)."""
    def strict(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        return v
    return json.dumps(strict(value), indent=1, allow_nan=False).encode()


def pose_conditioned(model):
    """Whether a --model name is ControlNeXt-SVD-v2 (the release, a folder with controlnet/, or the tiny one),
    which follows a pose sequence (--pose)."""
    return model in ("controlnext", "tiny-controlnext") or (Path(model) / "controlnet" / "config.json").exists()


def wan_model(model):
    """Whether a --model name is Wan2.2-TI2V-5B (the release, a folder whose transformer/config.json declares a
    WanTransformer3DModel, or the tiny one)."""
    if model in ("wan", "tiny-wan"):
        return True
    try:
        config = read_json(Path(model) / "transformer" / "config.json", "config")
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "WanTransformer3DModel"


def text_conditioned(model):
    """Whether a --model name takes a prompt (--prompt): CogVideoX-5B-I2V (the release, a folder with transformer/,
    or the tiny one) or Wan2.2-TI2V-5B (wan_model)."""
    return (model in ("cogvideox", "tiny-cogvideox") or wan_model(model)
            or (Path(model) / "transformer" / "config.json").exists())


def model_size(height, width, model):
    """--height/--width: the reference pipeline's 576x1024 unless given; ControlNeXt's portrait 1024x576;
    CogVideoX's 480x720; the toy's training size (its VAE config's sample_size); 128x128 for the tiny SVD and
    ControlNeXt, 32x32 for the tiny CogVideoX. Wan's frame follows each photo's shape (WanPipeline.frame_size): (None,
    None) unless both are given."""
    if wan_model(model) and height is None and width is None:
        return None, None
    if wan_model(model) and (height is None or width is None):
        fail("--height and --width: give both for Wan, or neither for a frame of the photo's own shape")
    if model == "toy":
        default = (build_network(TOY_MODEL, "vae").config.sample_size,) * 2
    elif model in ("tiny", "tiny-controlnext"):
        default = (128, 128)
    elif pose_conditioned(model):
        default = (1024, 576)
    elif model == "tiny-cogvideox":
        default = (32, 32)
    elif text_conditioned(model):
        default = (480, 720)  # the only size the release's learned position table takes
    else:
        default = (576, 1024)
    height, width = height or default[0], width or default[1]
    if height <= 0 or width <= 0 or height % 8 or width % 8:
        fail(f"--height and --width must be positive multiples of 8, got {height}x{width}")
    return height, width


def default_low_memory(device, model=None):
    """Memory mode by default on GPUs with less than 40 GiB, and on every GPU for Wan: at the release's 704x1280x121
    an iteration keeps 393 GiB without it, 39.8 GiB with it (benchmarks/wan_memory.py, docs/wan.md)."""
    if device.type != "cuda":
        return False
    if model is not None and wan_model(model):
        return True
    return torch.cuda.get_device_properties(device).total_memory < 40 * 2**30


def cpu_ticks(cores, stat="/proc/stat"):
    """(busy, all) clock ticks the CPUs numbered `cores` spent since boot, from Linux's per-CPU lines of /proc/stat
    (user nice system idle iowait irq softirq steal: idle and iowait are not busy)."""
    busy = every = 0
    for line in Path(stat).read_text().splitlines():
        name, *ticks = line.split()
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cores:
            ticks = [int(t) for t in ticks[:8]]
            busy, every = busy + sum(ticks) - ticks[3] - ticks[4], every + sum(ticks)
    if not every:
        raise ValueError(f"{stat} has none of the CPUs {sorted(cores)}")
    return busy, every


@functools.lru_cache(maxsize=1)  # a process's commands share one look (the tests run many in one process)
def busy_cores(cores, seconds=0.1):
    """How many of the CPUs `cores` (a frozenset) other work keeps busy now: the share of `seconds` they were busy
    (cpu_ticks read before and after), times their number; where /proc/stat cannot be read, the 1-minute load
    average. The load average lags by a minute: right after a command that kept two cores busy it still reads
    about 1, and the next command took one thread (its owner's view of a 12-megapixel photo 13.9 s, against 6.5 s
    with two)."""
    try:
        before = cpu_ticks(cores)
        time.sleep(seconds)
        after = cpu_ticks(cores)
    except (OSError, ValueError, IndexError):  # not Linux, or a /proc/stat of another shape
        return os.getloadavg()[0]
    busy, every = (a - b for a, b in zip(after, before))
    return len(cores) * busy / every if every else 0.0


def choose_threads(requested=None):
    """The CPU threads of this run: --threads, else OMP_NUM_THREADS, else one per core that is free now (the
    cores this process may use less those other work keeps busy, at least one). On a quiet 2-core machine two
    threads were fastest (the toy on examples/astronaut.png: 17 s against 25 s with one); beside other work, threads
    that wait for each other were many times slower than one (docs/speed-and-memory.md). Returns the count."""
    if requested:
        torch.set_num_threads(requested)
    elif not os.environ.get("OMP_NUM_THREADS"):
        cores = frozenset(os.sched_getaffinity(0))
        free = len(cores) - round(busy_cores(cores))
        torch.set_num_threads(max(1, min(torch.get_num_threads(), free)))
    return torch.get_num_threads()
