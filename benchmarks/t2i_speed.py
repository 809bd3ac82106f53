"""Seconds per image and peak memory of composable text-to-image: one batched UNet forward per
step (``ComposablePipeline``) against one forward per prompt (the community composable pipeline's
style), for 1–8 prompts, on the tiny random pipeline (``ebmcompose.pipelines.make_tiny_pipeline``).

Both modes run the same composition with the same seed (their latents agree to float rounding,
checked and recorded); the per-prompt mode is ``max_batch = K`` (each forward holds the K images of
one prompt, so a step costs P + 1 forwards). Each configuration runs in its own process, so its
peak memory is its own: the CPU's peak resident-set growth over the loaded pipeline
(``ru_maxrss``), or ``torch.cuda.max_memory_allocated`` on a GPU. Median of repeats.

Usage::

    python -m benchmarks.t2i_speed                  # writes benchmarks/results/t2i_speed.{json,md}
    python -m benchmarks.t2i_speed --quick          # 1 and 2 prompts, few steps, one repeat
    python -m benchmarks.t2i_speed --device cuda    # writes t2i_speed_cuda.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("batched", "per-prompt")
_PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a small dog", "a wooden table",
            "a yellow star", "a glass bottle", "a snowy hill"]


def expression(p: int) -> str:
    """``p`` prompts joined by AND, the last one negated when ``p >= 2``."""
    parts = list(_PROMPTS[:p])
    if p >= 2:
        parts[-1] = "NOT " + parts[-1]
    return " AND ".join(parts)


def measure(folder: str, p: int, mode: str, k: int, steps: int, repeats: int, device: str, threads: int) -> dict:
    """Time one configuration in this process; seconds per image, UNet forwards and peak memory."""
    import torch

    from ebmcompose.pipelines import ComposablePipeline

    torch.set_num_threads(threads)
    cp = ComposablePipeline.from_pretrained(folder, device=device)
    max_batch = k if mode == "per-prompt" else None
    run = lambda n_steps: cp(expression(p), num_images=k, num_inference_steps=n_steps, max_batch=max_batch,
                             generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    # warm-up on the smallest batch: lazy initialisation is neither timed nor counted as the run's memory
    cp(_PROMPTS[0], num_images=1, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent",
       progress=False)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forwards = []
    hook = cp.pipe.unet.register_forward_hook(lambda mod, inp, out: forwards.append(inp[0].shape[0]))
    times = []
    for _ in range(repeats):
        forwards.clear()
        start = time.perf_counter()
        out = run(steps)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    hook.remove()
    peak = (torch.cuda.max_memory_allocated() if cuda else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)  # ru_maxrss is KiB on Linux
    sec = statistics.median(times)
    return {
        "prompts": p, "mode": mode, "images": k, "steps": steps, "repeats": repeats,
        "seconds": sec, "seconds_per_image": sec / k, "nfe": out.nfe,
        "forwards_per_step": len(forwards) / steps, "largest_forward_batch": max(forwards),
        "peak_memory_mib": peak / 2**20, "peak_memory_kind": "cuda max allocated" if cuda else "RSS growth",
        "latents_sum": float(out.latents.double().sum()), "latents_abs_sum": float(out.latents.double().abs().sum()),
    }


def _measure_in_child(args_json: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.t2i_speed", "--child", args_json]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(Path(__file__).resolve().parents[1]))
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_benchmark(prompts, k, steps, repeats, device, threads, in_process=False) -> dict:
    """Every (prompts, mode) row; ``in_process`` skips the per-configuration processes (memory
    figures then share one process and only the first is meaningful: used by the tests)."""
    from ebmcompose.pipelines import make_tiny_pipeline

    with tempfile.TemporaryDirectory(prefix="t2i-speed-") as folder:
        make_tiny_pipeline(folder, seed=0)
        rows = []
        for p in prompts:
            for mode in MODES:
                spec = dict(folder=folder, p=p, mode=mode, k=k, steps=steps, repeats=repeats, device=device, threads=threads)
                rows.append(measure(**spec) if in_process else _measure_in_child(json.dumps(spec)))
    import diffusers
    import torch

    for p in prompts:
        b, s = (next(r for r in rows if r["prompts"] == p and r["mode"] == m) for m in MODES)
        b["speedup_vs_per_prompt"] = s["seconds_per_image"] / b["seconds_per_image"]
        scale = max(b["latents_abs_sum"], 1e-12)
        b["same_latents_as_per_prompt"] = abs(b["latents_sum"] - s["latents_sum"]) <= 1e-4 * scale
    return {
        "benchmark": "t2i_speed", "pipeline": "ebmcompose.pipelines.make_tiny_pipeline (16x16 images, 4x8x8 latents)",
        "device": device, "threads": threads, "images_per_prompt": k, "steps": steps, "repeats": repeats,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = [
        "# Composable text-to-image: one batched forward vs one forward per prompt",
        "",
        f"Tiny random pipeline, {result['device']}, {result['threads']} thread(s), K = {result['images_per_prompt']} "
        f"images, {result['steps']} steps, median of {result['repeats']}; load average at the start "
        f"{', '.join(f'{v:.1f}' for v in result['load_average'])} on {result['cpu_count']} CPUs. "
        "Produced by `python -m benchmarks.t2i_speed`.",
        "",
        "| prompts | forwards/step batched | per prompt | s/image batched | per prompt | speed-up | "
        "peak MiB batched | per prompt | same latents |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in (r for r in result["rows"] if r["mode"] == "batched"):
        s = next(r for r in result["rows"] if r["mode"] == "per-prompt" and r["prompts"] == b["prompts"])
        lines.append(
            f"| {b['prompts']} | {b['forwards_per_step']:g} | {s['forwards_per_step']:g} | {b['seconds_per_image']:.4f} | "
            f"{s['seconds_per_image']:.4f} | {b['speedup_vs_per_prompt']:.2f}x | {b['peak_memory_mib']:.1f} | "
            f"{s['peak_memory_mib']:.1f} | {'yes' if b['same_latents_as_per_prompt'] else 'NO'} |"
        )
    lines.append("")
    lines.append(f"Peak memory: {result['rows'][0]['peak_memory_kind']} during generation, over a warm-up on one prompt and one image.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 2 prompts, K = 1, 3 steps, one repeat")
    ap.add_argument("--prompts", type=lambda v: [int(n) for n in v.split(",")], default=None, help="default 1,2,4,8")
    ap.add_argument("--images", type=int, default=None, help="K images per run (default 2)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 20)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--in-process", action="store_true", help="no process per configuration (memory not separated)")
    ap.add_argument("--out", default=None, help="folder for the JSON and markdown (default benchmarks/results/)")
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    prompts = args.prompts or ([1, 2] if args.quick else [1, 2, 4, 8])
    k = args.images or (1 if args.quick else 2)
    steps = args.steps or (3 if args.quick else 20)
    repeats = args.repeats or (1 if args.quick else 5)
    result = run_benchmark(prompts, k, steps, repeats, args.device, args.threads, in_process=args.in_process)
    md = to_markdown(result)
    print(md)
    if args.write:
        out = Path(args.out) if args.out else RESULTS
        out.mkdir(parents=True, exist_ok=True)
        stem = "t2i_speed" + ("" if args.device == "cpu" else "_" + args.device.split(":")[0])
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{stem}.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
