"""Load Stable Video Diffusion img2vid into our networks, straight from the official safetensors files.

    svd = load_svd("stabilityai/stable-video-diffusion-img2vid")   # hub repo id (gated: accept the licence)
    svd = load_svd("/path/to/local/copy", variant=None)            # local directory, same layout
    svd = tiny_svd()                                               # small random networks, for tests only

The official repos are in the diffusers layout: `unet/`, `vae/` and `image_encoder/`, each with a
config.json and the weights (`*.fp16.safetensors` for variant "fp16", `*.safetensors` for variant None).
Our parameter names are the files' keys, so loading is a strict copy with every key and shape checked.
Only the three configs and three weight files are downloaded. Hub access goes through huggingface_hub,
which honours HF_TOKEN (or a saved `hf auth login`), HF_HOME and HF_HUB_OFFLINE.
"""
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, get_session, hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                    LocalEntryNotFoundError, RepositoryNotFoundError)
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from model import VAE, CLIPConfig, CLIPImageEncoder, UNet, UNetConfig, VAEConfig
from plumbing.reading import read_json

DEFAULT_MODEL = "stabilityai/stable-video-diffusion-img2vid"
# The toy SVD trained by `python -m toy.train` (64x64, 8 frames), in the official layout, float16 files.
TOY_MODEL = Path(__file__).resolve().parent / "toy" / "weights"

# folder: (network, its config, the class name its config.json declares, weights file stem)
COMPONENTS = {
    "unet": (UNet, UNetConfig, "UNetSpatioTemporalConditionModel", "diffusion_pytorch_model"),
    "vae": (VAE, VAEConfig, "AutoencoderKLTemporalDecoder", "diffusion_pytorch_model"),
    "image_encoder": (CLIPImageEncoder, CLIPConfig, "CLIPVisionModelWithProjection", "model"),
}
IGNORED_KEYS = ("vision_model.embeddings.position_ids",)  # a constant buffer that older CLIP files carry
LOAD_BAR_BYTES = 2**28  # reading weight files larger than this shows a progress bar (the releases', not the toy's)


class WeightsError(Exception):
    """A model could not be found or its files do not match our networks (the message says which)."""


@dataclass
class SVD:
    """The three networks of SVD img2vid; each keeps its config as `.config`."""
    vae: VAE
    unet: UNet
    image_encoder: CLIPImageEncoder
    source: str  # hub repo id, local directory, or "tiny"

    @property
    def untrained(self):
        return self.source == "tiny"


def fetch(source, relpath):
    """Local path of `relpath` inside a model directory or hub repo, downloading it if needed."""
    if Path(source).is_dir():
        path = Path(source) / relpath
        if not path.is_file():
            raise WeightsError(f"{path} is not a regular file" if path.exists() else f"missing file {path}")
        return path
    try:
        return Path(cached_or_download(source, relpath))
    except GatedRepoError:
        raise WeightsError(f"{source} is gated: accept its licence at https://huggingface.co/{source}, then log in "
                           f"with `hf auth login` or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"unknown model {source!r}: not a local directory nor a hub repo you can access "
                           f"(for a private repo, log in with `hf auth login` or set HF_TOKEN)") from None
    except HFValidationError:
        raise WeightsError(f"unknown model {source!r}: not a local directory nor a hub repo id") from None
    except LocalEntryNotFoundError:
        raise WeightsError(f"{source}/{relpath} is not in the local hub cache and the hub cannot be reached "
                           f"(offline, or HF_HUB_OFFLINE is set); once online, accept the licence at "
                           f"https://huggingface.co/{source} if it is gated and log in with `hf auth login`") from None
    except EntryNotFoundError:
        raise WeightsError(f"{source} has no file {relpath}") from None
    except HfHubHTTPError as e:
        raise WeightsError(f"could not download {source}/{relpath}: {str(e).splitlines()[0]}") from None


def cached_or_download(source, relpath):
    """hf_hub_download from the local cache, else from the hub if it answers at all: offline, one quick
    request fails instead of a download's retries."""
    try:
        return hf_hub_download(repo_id=source, filename=relpath, local_files_only=True)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE or not hub_reachable():
            raise
    return hf_hub_download(repo_id=source, filename=relpath)


def hub_reachable(timeout=5):
    """Whether the hub answers at all, through the session (and proxies) huggingface_hub uses."""
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # requests' and httpx's connection errors share no base class below Exception
        return False
    return True


def read_config(source, relpath, class_names, family="SVD's"):
    """A config.json as (its path, a dict), checked to be a JSON object declaring one of class_names
    (`_class_name`, or `architectures[0]` for transformers' files; neither: the first name is assumed);
    anything else is a WeightsError naming the file."""
    path = fetch(source, relpath)
    try:
        d = read_json(path, "config")
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable config.json ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise WeightsError(f"{path}: a config.json holds a JSON object, not a {type(d).__name__}")
    architectures = d.get("architectures")
    declared = d.get("_class_name") or (architectures[0] if isinstance(architectures, list) and architectures
                                        else class_names[0])
    if declared not in class_names:
        raise WeightsError(f"{path} describes a {declared!r}, not {family} {' or '.join(class_names)}")
    return path, d


SKELETONS = []  # non-empty while a network's skeleton is built on the meta device (skeleton())


@contextmanager
def skeleton():
    """Build networks on the meta device, as skeletons whose weights load_checked assigns: the memory rehearsal
    (plumbing/memory.py) counts the weights assigned, not the skeleton's, which a real run never allocates."""
    SKELETONS.append(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        SKELETONS.pop()


def build_network(source, folder):
    """A component's network on the meta device, from its config.json, checked: the right class, every
    value of its field's type, and a network that can be built from them. Anything else is a WeightsError
    naming the file."""
    network, config_class, class_name, _ = COMPONENTS[folder]
    path, d = read_config(source, f"{folder}/config.json", (class_name,))
    try:
        with skeleton():
            return network(config_class.from_json_dict(d))
    except (ValueError, TypeError, ZeroDivisionError, IndexError, RuntimeError) as e:
        raise WeightsError(f"{path}: no {network.__name__} can be built from it ({e})") from None


def short_list(keys, n=5):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_checked(model, paths, dtype=torch.float32, device="cpu", ignored=IGNORED_KEYS):
    """Fill a network built on the meta device from a safetensors file, or the shards of one (a list of
    files), checking every key and shape. Keys starting with one of `ignored` (buffers or heads we do not use)
    may be in the files or not."""
    name = type(model).__name__
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/ ({len(paths)} shards)"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {}
    try:
        owner = {}  # key -> the file holding it
        for path in paths:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    if k in owner:
                        raise WeightsError(f"{path}: {k} is also in {owner[k]}")
                    owner[k] = path
        keys = {k for k in owner if not k.startswith(ignored)}
        missing, unexpected = expected.keys() - keys, keys - expected.keys()
        if missing or unexpected:
            problems = [f"missing keys: {short_list(missing)}"] * bool(missing)
            problems += [f"unexpected keys: {short_list(unexpected)}"] * bool(unexpected)
            raise WeightsError(f"{where} does not match {name}: " + "; ".join(problems))
        size = sum(path.stat().st_size for path in map(Path, paths))
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {name}", disable=size < LOAD_BAR_BYTES,
                  leave=False) as bar:
            for path in paths:
                with safe_open(str(path), framework="pt") as f:
                    for k in sorted(keys & set(f.keys())):  # tensor by tensor, so at most one extra copy is alive
                        shape = tuple(f.get_slice(k).get_shape())
                        if shape != expected[k]:
                            raise WeightsError(f"{path}: {k} has shape {shape}, {name} expects {expected[k]}")
                        if torch.device(device).type == "meta":  # shapes only: nothing read (plumbing/memory.py)
                            state[k] = torch.empty(shape, dtype=dtype, device="meta")
                            continue
                        tensor = f.get_tensor(k)
                        bar.update(tensor.nbytes)
                        state[k] = tensor.to(device=device, dtype=dtype)
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)  # frozen: the attack needs gradients for the image only


def shard_files(source, index_relpath):
    """The local paths of the shards a safetensors index json (e.g. transformer/diffusion_pytorch_model.safetensors
    .index.json) names, each fetched: the release's large networks come in several files. A local folder
    with no index but the one file it would index (model.safetensors) gives that file."""
    single = index_relpath.removesuffix(".index.json")
    if Path(source).is_dir() and not (Path(source) / index_relpath).exists() and (Path(source) / single).is_file():
        return [fetch(source, single)]
    path = fetch(source, index_relpath)
    try:
        weight_map = read_json(path, "index")["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors index ({type(e).__name__}: {e})") from None
    if not files or any(not isinstance(f, str) or "/" in f or "\\" in f or f.startswith(".") for f in files):
        raise WeightsError(f"{path}: its weight_map must name shard files beside it")
    folder = index_relpath.rsplit("/", 1)[0] + "/" if "/" in index_relpath else ""
    return [fetch(source, folder + f) for f in files]


def load_network(source, folder, variant, dtype, device):
    """Build one network on the meta device and fill it from its safetensors file."""
    model = build_network(source, folder)
    stem = COMPONENTS[folder][3]
    filename = f"{folder}/{stem}.{variant}.safetensors" if variant else f"{folder}/{stem}.safetensors"
    return load_checked(model, fetch(source, filename), dtype, device)


def load_svd(source=DEFAULT_MODEL, variant="fp16", dtype=torch.float32, device="cpu"):
    """The three SVD networks from a hub repo id or a local directory in the official layout."""
    networks = {folder: load_network(str(source), folder, variant, dtype, device) for folder in COMPONENTS}
    return SVD(source=str(source), **networks)


def tiny_svd(seed=0, dtype=torch.float32, device="cpu"):
    """Small seeded RANDOM networks with SVD's structure, for tests and teaching. Untrained: protects nothing."""
    warnings.warn("tiny_svd: random untrained networks; their videos mean nothing and protection with them "
                  "protects nothing", stacklevel=2)
    unet = UNetConfig(block_out_channels=(32, 32, 64, 64), num_attention_heads=(1, 1, 2, 2), cross_attention_dim=64,
                      addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, num_frames=6)
    vae = VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1)
    clip = CLIPConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      patch_size=32, projection_dim=64)  # image_size stays 224, as the pipeline feeds it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        networks = dict(vae=VAE(vae), unet=UNet(unet), image_encoder=CLIPImageEncoder(clip))
    networks = {k: m.to(device=device, dtype=dtype).eval().requires_grad_(False) for k, m in networks.items()}
    return SVD(source="tiny", **networks)
