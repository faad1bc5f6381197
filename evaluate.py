"""Reproduce the paper's Tables 1 and 2 over a folder of photos, with VBench's metrics.

For each photo: the guarded photo of each method, then for each video seed (--video-seeds: by default
the three seeds after --seed, none of which the attacks used) the video SVD makes from the photo (V_0)
and from each guarded photo, with --victim's model if given (transfer: protection crafted against
--model, judged on another model), then
  Table 1 (videos): VBench subject consistency (DINO ViT-B/16), aesthetic quality (LAION predictor),
          temporal flickering, a weight-free stand-in for motion smoothness, and how far each video
          moved from V_0 (per-frame PSNR and SSIM, DINO feature similarity);
  Table 2 (photos): PSNR and SSIM between the photo and its guarded version.
With --transforms, each photo is also transformed (JPEG, resizing, blur, noise) before its video is made:
the survival report (judging/survival.py) and a second contact sheet, transformed.png.
Writes OUT/tables.md (mean ± std per method over photos and video seeds), OUT/results.csv and
OUT/results.json (per photo), and per photo OUT/<photo>/ with the guarded PNGs, metrics.json and
contact.png. Photos already done with the same settings are skipped; a photo that fails is reported and
the others go on. Under torchrun or with --shard each worker evaluates its share (plumbing/shard.py) and
writes its photos' folders; the tables are made from those folders by torchrun's rank 0 once every
worker is done, or, after --shard runs, by --merge-only.

example: python evaluate.py --image photos/ --out results/
"""
if __name__ == "__main__":  # Ctrl-C or SIGTERM while the modules below import: one line
    from plumbing.starting import quiet_start
    quiet_start()

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from attack import protect, selected_terms
from judging.judges import comparison_metrics, load_judges, tiny_judges, video_metrics
from judging.metrics import held_out_seeds
from judging.purifiers import VAERoundTrip
from judging.report import contact_sheet, model_note, write_results
from judging.survival import survive
from judging.transforms import EOT_KINDS, PURIFY
from judging.transforms import name as transform_name
from judging.visibility import owner_view
from pipelines.svd import SVDPipeline, generate, load_model
from plumbing.cli import (FAILURE, check_writable, choose_threads, command, default_dtype, default_low_memory, fail,
                          json_bytes, model_size, one_line, parse_device, pose_conditioned, refuse_clashes,
                          text_conditioned, weights_hint, write_files)
from plumbing.files import (digest, existing_photos, inputs_of, list_photos, model_files, quantise,
                            result_folder)
from plumbing.flags import PAPER_BUDGET, evaluate_flags, resolve_budget
from plumbing.reading import read_json
from plumbing.photos import model_input, png_bytes, read_photo, to_uint8
from plumbing.shard import join
from weights import WeightsError

# name: (protect's keyword arguments, the row's name in the tables)
METHODS = {
    "random": (None, "Random noise image"),  # Gaussian, matched to i2vguard's perturbation (see matched_noise)
    "random-sign": (dict(method="random-sign"), "Random ±eps noise image"),
    "i2vguard": (dict(method="i2vguard", terms=selected_terms()), "Our guarded image"),
    "no-spatial": (dict(method="i2vguard", terms=selected_terms(no_spatial=True)), "w.o. Spatial Attack"),
    "no-temporal": (dict(method="i2vguard", terms=selected_terms(no_temporal=True)), "w.o. Temporal Attack"),
    "no-diffusion": (dict(method="i2vguard", terms=selected_terms(no_diffusion=True)), "w.o. Diffusion Attack"),
    "photoguard": (dict(method="photoguard"), "PhotoGuard (encoder attack)"),
    "i2vguard-eot": (dict(method="i2vguard", terms=selected_terms(), eot=EOT_KINDS),
                     "Ours + EOT (JPEG, resize, blur, noise)"),
    "i2vguard-eot-purify": (dict(method="i2vguard", terms=selected_terms(), eot=PURIFY),
                            "Ours + EOT (the purify set)"),
}
DEFAULT_METHODS = [m for m in METHODS if not m.startswith("i2vguard-eot")]
METHOD_NAMES = {m: name for m, (_, name) in METHODS.items()}


# ---------------------------------------------------------------- one photo
def photo_metrics(view):
    """The guarded photo against the photo, as Table 2 gives it (judging/visibility.py's owner_view)."""
    return {"psnr": view["psnr_db"], "ssim": view["ssim"], "ciede2000": view["ciede2000_mean"],
            "ciede2000_p95": view["ciede2000_p95"], "display_psnr": view["display_psnr_db"]}


def make_video(svd, rgb8, args, seed):
    """The video SVD makes from a photo with `seed`, as the adversary makes it (all frames decoded together
    unless --decode-chunk says otherwise): uint8 frames (F,3,H,W)."""
    frames = generate(svd, model_input(rgb8, (args.height, args.width)), num_frames=args.frames,
                      steps=args.sample_steps, seed=seed, clip_image=rgb8.float() / 127.5 - 1,
                      low_memory=args.low_memory, decode_chunk_size=args.decode_chunk or args.frames)
    return torch.from_numpy(to_uint8(frames)).permute(0, 3, 1, 2)  # (F, 3, H, W)


def matched_noise(rgb8, guarded8, seed):
    """The paper's random baseline: the photo plus Gaussian noise with the mean and standard deviation
    (over all pixels and channels) of a guarded photo's perturbation, rounded and clipped to 8 bits."""
    d = guarded8.double() - rgb8.double()
    noise = torch.randn(d.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (rgb8.double() + d.mean() + d.std(correction=0) * noise).round().clamp(0, 255).to(torch.uint8)


def evaluate_photo(svd, victim, judges, photo, folder, methods, args):
    """All methods on one photo: returns its record and its files {path: bytes}, the guarded PNGs and the
    contact sheets. The attacks run against `svd`; every video is made by `victim` (the same model unless
    --victim), once per video seed, none of which the attacks used. The record holds, per method, a list of
    scores, one per video seed. A progress bar counts its stages: the attacks, each video seed's V_0 and
    videos, then with --transforms the videos of the transformed photos (at the first video seed)."""
    rgb8, alpha, icc = read_photo(photo)
    device = next(svd.unet.parameters()).device
    files, guarded, seen = {}, {}, {}
    transforms, seeds = args.transforms or [], args.video_seeds
    total = len(methods) + len(seeds) * (1 + len(methods)) + len(transforms) * (1 + len(methods))
    record = {"photo": photo.name, "video_seeds": seeds, "videos": {"original": []}}
    with tqdm(total=total, desc=f"{photo.name}: attacks", unit="stage") as stages:
        for name in sorted(methods, key=lambda m: m == "random"):  # random copies i2vguard's perturbation
            stages.set_description(f"{photo.name}: {name} attack")
            if name == "random":
                guarded8 = matched_noise(rgb8, guarded["i2vguard"], args.seed)
            else:
                I_adv, _ = protect(SVDPipeline(svd), (rgb8.float() / 255).to(device), **METHODS[name][0],
                                   eps=args.eps, steps=args.steps, num_frames=args.frames,
                                   size=(args.height, args.width), sample_steps=args.sample_steps, seed=args.seed,
                                   budget=args.budget, chroma=args.chroma, fidelity=args.fidelity,
                                   progress=True)
                guarded8 = quantise(rgb8, I_adv, args.eps, None)
            guarded[name] = guarded8
            seen[name] = owner_view(rgb8, guarded8)
            files[folder / f"{name}.png"] = png_bytes(guarded8, alpha, icc)
            record["videos"][name] = []
            stages.update()
        for k, seed in enumerate(seeds):
            stages.set_description(f"{photo.name}: V_0, seed {seed}")
            clean8 = make_video(victim, rgb8, args, seed)
            stages.update()
            clean, clean_features = video_metrics(judges, clean8)
            record["videos"]["original"].append(clean)
            rows = [("original", rgb8, None, clean8)]
            for name in methods:
                stages.set_description(f"{photo.name}: {name} video, seed {seed}")
                guarded8 = guarded[name]
                frames8 = make_video(victim, guarded8, args, seed)
                stages.update()
                scores, features = video_metrics(judges, frames8)
                record["videos"][name].append(scores | comparison_metrics(frames8, clean8, features, clean_features)
                                              | photo_metrics(seen[name]))
                rows.append((name, guarded8, (guarded8.int() - rgb8.int()).abs(), frames8))
            if k == 0:
                files[folder / "contact.png"] = contact_sheet(rows)
                if transforms:
                    stages.set_description(f"{photo.name}: transformed photos' videos")

                    def video(rgb8):
                        stages.update()
                        return make_video(victim, rgb8, args, seed)

                    vae = VAERoundTrip(victim.vae, (args.height, args.width))  # the adversary's own, for "vae"
                    record["transformed"], sheet = survive(rows, transforms, video, args.seed, vae)
                    files[folder / "transformed.png"] = contact_sheet(sheet)
    return record, files


# ---------------------------------------------------------------- command line
RUN_FILES = ("tables.md", "results.csv", "results.json")
# What a photo's results depend on: a rerun with other values must not reuse them.
SETTINGS = ("model", "victim", "variant", "dtype", "eps", "budget", "chroma", "fidelity", "steps", "seed",
            "video_seeds", "frames", "sample_steps", "height", "width", "decode_chunk", "no_judges", "dino",
            "aesthetic")


def read_record(done):
    """A photo's record from its metrics.json, or None when there is none or it cannot be read (a FIFO there
    is not read: it would block)."""
    try:
        record = read_json(done, "report")
    except (OSError, ValueError):
        return None
    return record if well_formed(record) else None


def well_formed(record):
    """Whether a metrics.json holds what the tables read: a photo name, its settings, its video seeds, and per
    method a list of one dict of scores per video seed (a hand-edited or foreign file is made again)."""
    if not isinstance(record, dict) or not isinstance(record.get("videos"), dict):
        return False
    seeds = record.get("video_seeds")
    return (isinstance(record.get("photo"), str) and isinstance(record.get("settings"), dict)
            and isinstance(seeds, list) and len(seeds) > 0 and "original" in record["videos"]
            and all(isinstance(v, list) and len(v) == len(seeds) and all(isinstance(d, dict) for d in v)
                    for v in record["videos"].values()))


def previous_record(done, settings):
    """The record an earlier run left in `done` (a photo's metrics.json), or None when there is none or it
    cannot be read (it is made again). One made with other settings is refused: reusing it would mix
    settings in the tables, and replacing it would lose it."""
    if not done.exists():
        return None
    record = read_record(done)
    if record is None:
        if done.is_file():  # anything else there (a folder, a FIFO) fails this photo, in one line, when written
            print(f"{done}: unreadable; this photo is evaluated again", file=sys.stderr)
        return None
    old = record.get("settings")
    if isinstance(old, dict):  # made before the budget could be chosen: with the paper's
        old = PAPER_BUDGET | old
    if old != settings:
        changes = "no settings recorded" if not isinstance(old, dict) else ", ".join(
            f"{k} {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v)
        fail(f"{done} was made with other settings ({changes}); give another --out, or delete {done.parent} to redo it")
    return record


def merge(out, folders, methods, settings):
    """Write the tables over the photos of `folders` (in out) done with these settings and methods, and
    say how many of them are done; returns that number."""
    records = [read_record(folder / "metrics.json") for folder in folders]
    records = [r for r in records
               if r is not None and r.get("settings") == settings and set(methods) <= set(r["videos"])]
    if records:
        print(write_results(out, records, [m for m in METHODS if m in methods], METHOD_NAMES,
                            model_note(settings["model"])), end="")
    if len(folders) > 1:
        print(f"{len(records)} of {len(folders)} photos evaluated", file=sys.stderr)
    return len(records)


def merge_only(out, photos):
    """--merge-only: the tables over the photo folders in `out` (those of `photos` when given), made with
    the settings of the first one done and the methods every one has; exit 1 if some are not done."""
    folders = [result_folder(out, photo) for photo in photos] if photos else sorted(
        folder for folder in out.iterdir() if (folder / "metrics.json").is_file())
    records = {folder: read_record(folder / "metrics.json") for folder in folders}
    done = {folder: record for folder, record in records.items() if record is not None}
    if not done:
        fail(f"no photo in {out} is done yet")
    first = next(iter(done))
    settings = done[first].get("settings")
    other = [str(folder) for folder, record in done.items() if record.get("settings") != settings]
    if other:
        fail(f"{', '.join(other)}: made with other settings than {first}; merge each run's --out on its own")
    methods = [m for m in METHODS if all(m in record["videos"] for record in done.values())]
    if merge(out, folders, methods, settings) < len(folders):
        sys.exit(FAILURE)


@command
def main(argv=None):
    parser = evaluate_flags(__doc__, list(METHODS), DEFAULT_METHODS)
    args = resolve_budget(parser, parser.parse_args(argv))
    choose_threads(args.threads)
    if args.merge_only:
        out = Path(args.out)
        if not out.is_dir():
            fail(f"no such folder: {out}")
        check_writable(out)
        return merge_only(out, list_photos(args.image or []))
    if not args.image:
        fail("the following arguments are required: --image/--photos (see -h)")

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        fail(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "random" in args.methods and "i2vguard" not in args.methods:
        fail("--methods: random copies the mean and std of i2vguard's perturbation; add i2vguard")
    args.methods = [m for m in METHODS if m in args.methods]  # the tables' order, so the contact sheets' too
    for name in filter(None, (args.model, args.victim)):
        if pose_conditioned(name) or text_conditioned(name):
            fail(f"--model {name}: evaluate.py judges SVD models (a hub id or folder, toy, tiny); for ControlNeXt and "
                 "CogVideoX, protect with attack.py and make the videos with sample.py")
    if not 1 / 255 <= args.eps <= 1:
        fail(f"--eps must be between 1/255 and 1, got {args.eps:g}")
    args.height, args.width = model_size(args.height, args.width, args.model)
    photos = existing_photos(args.image)
    out = Path(args.out)
    check_writable(out, may_create=True)
    planned = [("the tables", out / name) for name in RUN_FILES]
    for photo in photos:
        folder = result_folder(out, photo)
        planned += [(photo, folder)] + [(photo, folder / name) for name in
                                        [f"{m}.png" for m in args.methods] + ["metrics.json", "contact.png"]
                                        + ["transformed.png"] * bool(args.transforms)]
    refuse_clashes(planned, inputs_of(args, photos))
    args.video_seeds = args.video_seeds or held_out_seeds(args.seed)
    if args.seed in args.video_seeds:
        fail(f"--video-seeds must leave out the attack's --seed {args.seed}: protection is judged on videos "
             "made with randomness the attack never saw")
    worker, device = join(args.shard, parse_device(args.device), args.join_timeout)
    args.dtype = args.dtype or default_dtype(device)
    try:
        svd = load_model(args.model, device, getattr(torch, args.dtype), args.variant)
        args.victim = args.victim or args.model
        victim = svd if args.victim == args.model else load_model(args.victim, device, getattr(torch, args.dtype),
                                                                   args.variant)
        args.no_judges = args.no_judges or args.model == "toy"  # the toy's 64x64 videos are scored without them
        if args.no_judges:
            judges = None
        else:
            judges = (tiny_judges(device=device) if args.model == "tiny"
                      else load_judges(args.dino, args.aesthetic, device))
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)
    args.frames = args.frames or svd.unet.config.num_frames
    if args.frames < 3:
        fail(f"the model makes {args.frames} frames; the metrics need at least 3 (--frames)")
    args.low_memory = default_low_memory(device) if args.low_memory is None else args.low_memory
    for network in (svd.unet, svd.vae, victim.unet, victim.vae):
        network.checkpointing = args.low_memory
    settings = {key: getattr(args, key) for key in SETTINGS}
    if args.transforms:  # recorded only when given, so that runs made before --transforms still resume
        settings["transforms"] = [transform_name(spec) for spec in args.transforms]
    if model_files(args):  # local model folders only: a record made before, with a folder, is refused as stale
        settings["model_files"] = model_files(args)
    previous = {photo: previous_record(result_folder(out, photo) / "metrics.json", settings) for photo in photos}

    failures = []
    mine = [photo for photo in photos if worker.takes(photo)]
    with tqdm(mine, desc=worker.label, unit="photo", disable=len(photos) < 2) as bar:
        for photo in bar:
            record, folder, sha256 = previous[photo], result_folder(out, photo), digest([photo])
            if (record is not None and set(args.methods) <= set(record["videos"])
                    and record.get("inputs_sha256") == sha256
                    and all((folder / f"{m}.png").is_file() for m in args.methods)):
                bar.write(f"{photo}: done already, skipped", file=sys.stderr)
                continue
            start = time.perf_counter()
            try:
                record, files = evaluate_photo(svd, victim, judges, photo, folder, args.methods, args)
                record |= {"settings": settings, "inputs_sha256": sha256, "wall_time_s": time.perf_counter() - start}
                write_files(files | {folder / "metrics.json": json_bytes(record)})
            except (ValueError, OSError, RuntimeError, MemoryError) as e:
                failures.append(photo)
                bar.write(f"evaluate.py: error: {photo}: {one_line(e)}", file=sys.stderr)
                continue
            bar.write(f"{photo}: {record['wall_time_s']:.1f} s", file=sys.stderr)
    worker.wait_for_all()
    if args.shard:
        print(f"{worker.label} done; once every shard is, make the tables with: evaluate.py --merge-only "
              f"--image {' '.join(args.image)} --out {out}", file=sys.stderr)
    elif worker.rank == 0:
        merge(out, [result_folder(out, photo) for photo in photos], args.methods, json.loads(json_bytes(settings)))
    worker.finish()
    if failures:
        sys.exit(FAILURE)


if __name__ == "__main__":
    main()
