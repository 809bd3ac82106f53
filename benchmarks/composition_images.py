"""Composition on images: accuracy of AND / NOT over positions and attributes, by sampler.

    python -m benchmarks.composition_images [--n 200] [--nfe 50] [--out benchmarks/results]
    python -m benchmarks.composition_images --quick --out /tmp/ci      # tiny random-weight models
    python -m benchmarks.composition_images --models position:energy --tasks positions --out part1 &
    python -m benchmarks.composition_images --merge part1/composition_images.json part2/... --out OUT
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m -- benchmarks.composition_images --block 25 --out OUT

Cells (each ``n`` images; every image gets its own random request, drawn like the training data):

* ``positions K`` (K = 1…5): ``at(p_1) AND … AND at(p_K)`` on the position model, by sampler and
  parameterisation; accuracy = every requested position has an object within 0.1 (the article's
  metric), strict = exactly those objects;
* ``joint K``: the jointly conditioned baseline (one model given all K positions, with the same
  guidance scale) on the same requests;
* ``NOT``: ``at(p) AND NOT at(q)``;
* ``attributes``: ``colour``, ``colour AND shape``, ``colour AND shape AND size``,
  ``colour AND NOT shape``, ``shape``, ``size`` and ``colour AND shape AND NOT size`` (e.g. "red AND
  square AND NOT small") on the single-object attribute model, and (when it was trained with
  multi-hot labels) the jointly conditioned baseline of each AND cell: one condition holding all
  the requested attributes.

Every cell reports accuracy and strict accuracy with binomial standard errors
``sqrt(p (1 − p) / n)``, the NFE (network forwards, all leaves batched into one) and seconds per
image. The ``smc`` sampler (:class:`PerImageSMC`) runs :data:`SMC_PARTICLES` weighted particles per
image (NFE per particle, so each image costs that many times the compute: see its seconds). Samplers are built at a matched NFE budget by :func:`ebmcompose.cli.scene_sampling.build_sampler`
(MALA and HMC only on the energy-parameterised model). Writes
``OUT/composition_images.{json,md,png}`` atomically; the markdown's findings are computed from
the numbers (differences are called significant only beyond 2 standard errors).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

import ebmcompose as ec
from ebmcompose.io import atomic_write, write_json, write_text

from ebmcompose.cli.scene_sampling import NEEDS_ENERGY, SAMPLERS, build_sampler

__all__ = ["run", "main", "findings"]

ATTRIBUTE_CELLS = ("colour", "colour AND shape", "colour AND shape AND size", "colour AND NOT shape", "shape", "size",
                   "colour AND shape AND NOT size")
RADIUS = 0.1


# ---------------------------------------------------------------------------- models
MODELS = ("position:epsilon", "position:energy", "attribute:epsilon", "attribute:energy", "joint:epsilon")


def load_models(quick: bool, checkpoint_dir=None, max_batch: Optional[int] = None, only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``{"position:epsilon": SceneModel, ...}``: shipped (or ``checkpoint_dir``) models, or tiny
    random-weight ones in quick mode, restricted to ``only`` (keys of :data:`MODELS`). Missing
    checkpoints are skipped (reported in the output)."""
    from ebmcompose.checkpoint import CheckpointNotFoundError
    from toy import pretrained
    from toy.image_train import config_for
    from toy.scene_model import SceneModel
    from toy.scene_nets import SceneUNet

    unknown = set(only or ()) - set(MODELS)
    if unknown:
        raise ec.InputError(f"unknown models {sorted(unknown)}; valid models are {', '.join(MODELS)}")
    models = {}
    for key in MODELS if only is None else [m for m in MODELS if m in only]:
        family, param = key.split(":")
        if quick:
            net = SceneUNet(**config_for(family, param, "quick").net_config()).eval().requires_grad_(False)
            models[key] = SceneModel.from_net(net, param, max_batch=max_batch)
            continue
        try:
            models[key] = pretrained.scene_model(family, param, checkpoint_dir=checkpoint_dir, max_batch=max_batch)
        except CheckpointNotFoundError:
            models[key] = None
    return models


# ---------------------------------------------------------------------------- requests
def position_requests(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, k, 2)`` positions of ``k`` non-overlapping objects per image (like the training scenes)."""
    from toy import scenes

    layouts = scenes.random_scenes(n, generator, n_objects=(k, k))
    return torch.tensor([[(o.x, o.y) for o in sc.objects] for sc in layouts], dtype=torch.float32)


def _conds(xy: torch.Tensor) -> torch.Tensor:
    """``(n, 2)`` positions → ``(n, 3)`` position conditions ``(x, y, 1)``."""
    return torch.cat([xy, torch.ones(xy.shape[0], 1)], dim=1)


def attribute_requests(cell: str, n: int, generator: torch.Generator):
    """``(require, forbid)``: per image, lists of attribute names for an attribute cell."""
    from toy import scenes

    colours, shapes, sizes = list(scenes.COLORS), list(scenes.SHAPES), list(scenes.SIZES)
    pick = lambda names: [names[int(i)] for i in torch.randint(len(names), (n,), generator=generator)]
    c, s, z = pick(colours), pick(shapes), pick(sizes)
    if cell == "colour":
        return [[a] for a in c], [[] for _ in range(n)]
    if cell == "colour AND shape":
        return [[a, b] for a, b in zip(c, s)], [[] for _ in range(n)]
    if cell == "colour AND shape AND size":
        return [[a, b, d] for a, b, d in zip(c, s, z)], [[] for _ in range(n)]
    if cell == "colour AND NOT shape":
        return [[a] for a in c], [[b] for b in s]
    if cell in ("shape", "size"):
        return [[a] for a in (s if cell == "shape" else z)], [[] for _ in range(n)]
    if cell == "colour AND shape AND NOT size":  # e.g. "red AND square AND NOT small"
        return [[a, b] for a, b in zip(c, s)], [[d] for d in z]
    raise ValueError(f"unknown attribute cell {cell!r}")


def _one_hot(names: List[str]) -> torch.Tensor:
    from toy import scenes

    return torch.stack([scenes.attribute(a) for a in names])


# ---------------------------------------------------------------------------- cells
def _builder(sm, keep: Sequence[torch.Tensor], negs: Sequence[torch.Tensor] = (), weight: float = 3.0):
    """``build(lo, hi, repeat=1)``: ``sm.combine`` of one leaf per condition tensor of ``keep`` (AND NOT
    ``negs``), each ``(n, cond_dim)`` with one row per image, restricted to images ``[lo, hi)``, each
    row repeated ``repeat`` times (SMC's particles of one image)."""
    def build(lo, hi, repeat=1):
        rows = lambda c: c[lo:hi].repeat_interleave(repeat, 0)
        return sm.combine([sm.leaf(rows(c)) for c in keep], [sm.leaf(rows(c)) for c in negs], weight=weight)
    return build


#: Particles per image of the study's SMC samplers, and the first time of their ladder by weights (FKC
#: weights need small steps: see ``samplers.fkc``).
SMC_PARTICLES = 4
SMC_T_MAX = {"energy": 0.98, "fkc": 0.9}
#: The study's per-image SMC samplers (:class:`PerImageSMC`): energy weights where the model has energies / FKC weights.
SMC_SAMPLERS = ("smc", "smc-fkc")


class PerImageSMC:
    """SMC with ``m`` particles per image: each image of a batch is one population of ``m`` particles
    (its request's conditions repeated ``m`` times, ``samplers.SMC.sample(..., populations=n)``), and
    gives its first particle after the final resampling (an equally weighted draw). Energy weights on
    energy-parameterised models, Feynman–Kac corrector weights on ε-models; no rejuvenation. NFE per
    particle ``levels + 1``; each image costs ``m`` particles. ``weights="fkc"``: FKC weights on any model
    (the study's ``smc-fkc``)."""

    def __init__(self, schedule, nfe: int, parameterisation: str, m: int = SMC_PARTICLES, weights: Optional[str] = None):
        from samplers import SMC

        self.m = m
        weights = weights or ("energy" if parameterisation == "energy" else "fkc")
        self.smc = SMC(schedule, max(nfe - 1, 1), weights=weights,
                       t_max=SMC_T_MAX[weights], t_min=0.01)

    def sample(self, energy, shape, generator=None, **kwargs):
        """``energy`` of ``n · m`` rows (each image's ``m`` in a row); ``shape`` ``(n, *event)``."""
        import dataclasses

        n, event = shape[0], tuple(shape[1:])
        res = self.smc.sample(energy, shape=(n * self.m, *event), generator=generator, populations=n, **kwargs)
        return dataclasses.replace(res, samples=res.samples.view(n, self.m, *event)[:, 0])


def _sample(build, sm, sampler_name: str, nfe: int, n: int, seed: int, blocks=None):
    """``(images in [0, 1], NFE, seconds, extra)`` of ``n`` images of the energy ``build(0, n)`` (``extra``:
    row fields a sampler adds, e.g. SMC's mean ESS fraction in one process).

    ``blocks = (block, session)``: drawn through ``ec.distributed.sample`` in blocks of ``block`` images,
    each with the energy of its rows and the stream of ``(seed, b)``, spread over the session's ranks
    (the same images on any number of processes); ``None``: one generator for all (one process).
    """
    from toy.scene_model import to_unit

    extra = {}
    if sampler_name in SMC_SAMPLERS:  # each image's conditions once per particle
        sampler = PerImageSMC(sm.schedule, nfe, sm.parameterisation, weights="fkc" if sampler_name == "smc-fkc" else None)
        energy_of = functools.partial(build, repeat=sampler.m)
    else:
        sampler, energy_of = build_sampler(sampler_name, sm.schedule, nfe), build
    t0 = time.perf_counter()
    if blocks is None:
        res = sampler.sample(energy_of(0, n), shape=sm.shape(n), generator=torch.Generator().manual_seed(seed))
        images, used = res.samples, int(res.info["nfe"])
        if sampler_name in SMC_SAMPLERS:  # how far the weights degenerate: ESS / particles, mean over levels and images
            extra["smc_mean_ess_fraction"] = round(float(res.info.ess.mean()) / sampler.m, 4)
    else:
        block, session = blocks
        res = ec.distributed.sample(sampler, ec.distributed.PerBlock(energy_of), n, seed=seed, event_shape=sm.shape(1)[1:],
                                    block=block, session=session)
        images, used = res.samples, res.nfe
    return to_unit(images), used, time.perf_counter() - t0, extra


def _rate(ok: torch.Tensor) -> Dict[str, float]:
    n = ok.numel()
    p = float(ok.float().mean()) if n else float("nan")
    return {"p": p, "se": math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")}


def fingerprint(images: torch.Tensor) -> str:
    """The first 12 hex digits of the SHA-1 of the images' float32 bytes (same images, same digits)."""
    return hashlib.sha1(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()[:12]


def _row(task: str, k: int, model: str, param: str, sampler: str, n: int, acc, strict, nfe: int, seconds: float,
         budget: Optional[int] = None, weight: Optional[float] = None, images: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    return {
        "task": task, "k": k, "model": model, "parameterisation": param, "sampler": sampler, "n": n,
        "nfe_budget": budget, "weight": weight,
        "accuracy": round(acc["p"], 4), "accuracy_se": round(acc["se"], 4),
        "strict": None if strict is None else round(strict["p"], 4),
        "strict_se": None if strict is None else round(strict["se"], 4),
        "nfe": nfe, "seconds_per_image": round(seconds / n, 4),
        "images_sha1": None if images is None else fingerprint(images),
    }


#: The study's samplers: those of ``ebmcompose scenes sample`` and per-image SMC.
STUDY_SAMPLERS = SAMPLERS + SMC_SAMPLERS


def _samplers_for(param: str, names: Sequence[str]) -> List[str]:
    return [s for s in names if param == "energy" or s not in NEEDS_ENERGY]


TASKS = ("positions", "not", "attributes")


def run(*, quick: bool = False, n: int = 200, nfe: int = 50, ks: Sequence[int] = (1, 2, 3, 4, 5), samplers: Sequence[str] = SAMPLERS,
        weight: float = 3.0, seed: int = 0, checkpoint_dir=None, max_batch: Optional[int] = None,
        tasks: Sequence[str] = TASKS, energy_ks: Optional[Sequence[int]] = None, energy_samplers: Optional[Sequence[str]] = None,
        variants: Optional[Dict[str, Any]] = None, models: Optional[Sequence[str]] = None, block: Optional[int] = None,
        session=None, log=print) -> Dict[str, Any]:
    """Run the cells of ``tasks``; returns ``{"rows": [...], "settings": {...}, "missing": [...]}``.

    ``energy_ks`` / ``energy_samplers`` restrict the (costlier) energy-parameterised cells (default:
    ``ks`` / ``samplers``); ``variants`` maps a label to another position ε model (e.g. the
    embedding-only net), run on the position cells with the ε samplers as model ``composed (label)``;
    ``models`` restricts the checkpoints loaded (keys of :data:`MODELS`, default all). ``block``: draw
    each cell's images in blocks of ``block`` over the ranks of ``session`` (``ec.distributed``; the
    same images whatever the number of processes); ``None``: one generator per cell, one process.
    """
    from toy import scenes

    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ec.InputError(f"unknown tasks {sorted(unknown)}; valid tasks are {', '.join(TASKS)}")
    only = models
    models = load_models(quick, checkpoint_dir, max_batch, only)
    blocks = None if block is None else (block, session or ec.distributed.Session())
    if blocks is None and session is not None and session.distributed:
        raise ec.InputError("several processes draw images in blocks: pass block=B (--block B)")

    def draw(build, sm, s, seed_):
        return _sample(build, sm, s, nfe, n, seed_, blocks)

    energy_ks = list(ks) if energy_ks is None else list(energy_ks)
    energy_samplers = list(samplers) if energy_samplers is None else list(energy_samplers)

    def samplers_for(param: str) -> List[str]:
        return _samplers_for(param, energy_samplers if param == "energy" else samplers)

    position_models = [("composed", "epsilon", models.get("position:epsilon")), ("composed", "energy", models.get("position:energy"))]
    position_models += [(f"composed ({label})", "epsilon", sm) for label, sm in (variants or {}).items()]
    rows: List[Dict[str, Any]] = []
    missing = [k for k, v in models.items() if v is None]
    for k in ks if "positions" in tasks else ():
        xy = position_requests(n, k, torch.Generator().manual_seed(seed + 100 * k))
        wanted = [[tuple(map(float, p)) for p in xy[i]] for i in range(n)]

        def score(images):
            acc = torch.stack([scenes.position_accuracy(images[i : i + 1], at=wanted[i], radius=RADIUS)[0] for i in range(n)])
            strict = torch.stack([scenes.position_strict(images[i : i + 1], at=wanted[i], radius=RADIUS)[0] for i in range(n)])
            return _rate(acc), _rate(strict)

        for label, param, sm in position_models:
            if sm is None or (param == "energy" and k not in energy_ks):
                continue
            build = _builder(sm, [_conds(xy[:, j]) for j in range(k)], weight=weight)
            for s in samplers_for(param):
                images, used, secs, extra = draw(build, sm, s, seed + k)
                acc, strict = score(images)
                rows.append({**_row(f"positions K={k}", k, label, param, s, n, acc, strict, used, secs, nfe, weight, images), **extra})
                log(f"positions K={k} {label} {param:<8}{s:<13} acc {acc['p']:.3f}±{acc['se']:.3f} strict {strict['p']:.3f} nfe {used} {secs / n:.3f} s/img")
        sm = models.get("joint:epsilon")
        if sm is not None:
            joint = torch.zeros(n, 15)
            for j in range(k):
                joint[:, 3 * j : 3 * j + 3] = _conds(xy[:, j])
            build = _builder(sm, [joint], weight=weight)
            for s in _samplers_for("epsilon", [x for x in samplers if x in ("ddpm", "ddim")]):
                images, used, secs, extra = draw(build, sm, s, seed + k)
                acc, strict = score(images)
                rows.append({**_row(f"positions K={k}", k, "joint", "epsilon", s, n, acc, strict, used, secs, nfe, weight, images), **extra})
                log(f"positions K={k} joint   {s:<13} acc {acc['p']:.3f}±{acc['se']:.3f} strict {strict['p']:.3f} nfe {used} {secs / n:.3f} s/img")
    if "not" in tasks:
        rows += _negation_cells(position_models[:2], n, nfe, weight, seed, samplers_for, draw, log)
    for ci, cell in enumerate(ATTRIBUTE_CELLS if "attributes" in tasks else ()):
        require, forbid = attribute_requests(cell, n, torch.Generator().manual_seed(seed + 1000 + ci))
        for param in ("epsilon", "energy"):
            sm = models.get(f"attribute:{param}")
            if sm is None:
                continue
            keep = [_one_hot([r[j] for r in require]) for j in range(len(require[0]))]
            negs = [_one_hot([f[j] for f in forbid]) for j in range(len(forbid[0]))]
            build = _builder(sm, keep, negs, weight=weight)
            for s in samplers_for(param):
                images, used, secs, extra = draw(build, sm, s, seed + 1000 + ci)
                ok = torch.stack([scenes.attribute_accuracy(images[i : i + 1], require=require[i], forbid=forbid[i])[0] for i in range(n)])
                acc = _rate(ok)
                rows.append({**_row(f"attributes: {cell}", len(require[0]) + len(forbid[0]), "composed", param, s, n, acc, None, used, secs, nfe, weight, images), **extra})
                log(f"attributes {cell:<32}{param:<8}{s:<13} acc {acc['p']:.3f}±{acc['se']:.3f} nfe {used}")
            if sm.attribute_labels == "multi" and len(require[0]) > 1 and not forbid[0]:
                # the jointly conditioned baseline: one multi-hot condition holding every requested attribute
                build = _builder(sm, [torch.stack([scenes.attributes(r) for r in require])], weight=weight)
                for s in _samplers_for(param, [x for x in samplers if x in ("ddpm", "ddim")]):
                    images, used, secs, extra = draw(build, sm, s, seed + 1000 + ci)
                    ok = torch.stack([scenes.attribute_accuracy(images[i : i + 1], require=require[i])[0] for i in range(n)])
                    acc = _rate(ok)
                    rows.append({**_row(f"attributes: {cell}", len(require[0]), "joint", param, s, n, acc, None, used, secs, nfe, weight, images), **extra})
                    log(f"attributes {cell:<26}joint {param:<8}{s:<13} acc {acc['p']:.3f}±{acc['se']:.3f} nfe {used}")
    settings = {"quick": quick, "n": n, "nfe_budget": nfe, "ks": list(ks), "samplers": list(samplers), "weight": weight,
                "tasks": list(tasks), "energy_ks": energy_ks, "energy_samplers": energy_samplers, "variants": sorted(variants or {}),
                "models_run": sorted(models), "seed": seed, "radius": RADIUS, "threads": torch.get_num_threads(),
                "models": "random-weight tiny nets (quick mode)" if quick else "shipped checkpoints", "block": block}
    return {"rows": rows, "settings": settings, "missing": missing}


def _negation_cells(position_models, n: int, nfe: int, weight: float, seed: int, samplers_for, draw, log) -> List[Dict[str, Any]]:
    """``at(p) AND NOT at(q)``, and ``at(p)`` alone on the same requests: how often an object sits at
    ``q`` with and without the NOT (the NOT target: at most half as often)."""
    from toy import scenes

    xy = position_requests(n, 2, torch.Generator().manual_seed(seed + 7))
    p = [[tuple(map(float, xy[i, 0]))] for i in range(n)]
    q = [tuple(map(float, xy[i, 1])) for i in range(n)]
    rows = []
    for label, param, sm in position_models:
        if sm is None:
            continue
        for task, negs in (("NOT", [_conds(xy[:, 1])]), ("NOT (without the NOT)", [])):
            build = _builder(sm, [_conds(xy[:, 0])], negs, weight=weight)
            for s in samplers_for(param):
                images, used, secs, extra = draw(build, sm, s, seed + 7)
                ok = torch.stack([scenes.position_accuracy(images[i : i + 1], at=p[i], not_at=[q[i]], radius=RADIUS)[0] for i in range(n)])
                at_p = torch.stack([scenes.count_near(images[i : i + 1], p[i][0], radius=RADIUS)[0] for i in range(n)])
                at_q = torch.stack([scenes.count_near(images[i : i + 1], q[i], radius=RADIUS)[0] for i in range(n)])
                acc = _rate(ok)
                row = {**_row(task, 1, label, param, s, n, acc, None, used, secs, nfe, weight, images), **extra}
                row.update({"object_at_p": round(_rate(at_p)["p"], 4), "object_at_q": round(_rate(at_q)["p"], 4),
                            "object_at_q_se": round(_rate(at_q)["se"], 4)})
                rows.append(row)
                log(f"{task} {param:<8}{s:<13} acc {acc['p']:.3f}±{acc['se']:.3f} at p {row['object_at_p']:.3f} at q {row['object_at_q']:.3f} nfe {used}")
    return rows


# ---------------------------------------------------------------------------- report
def _best(rows, **match):
    cand = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(cand, key=lambda r: r["accuracy"]) if cand else None


def _versus(a, b) -> str:
    """``a`` against ``b``: the difference and whether it exceeds 2 combined standard errors."""
    d = a["accuracy"] - b["accuracy"]
    se = math.hypot(a["accuracy_se"], b["accuracy_se"])
    if se == 0:
        verdict = "no difference measurable" if d == 0 else ("higher" if d > 0 else "lower")
    elif abs(d) > 2 * se:
        verdict = "higher (beyond 2 SE)" if d > 0 else "lower (beyond 2 SE)"
    else:
        verdict = "not significantly different"
    return f"{a['accuracy']:.3f} vs {b['accuracy']:.3f} ({d:+.3f} ± {se:.3f}): {verdict}"


def findings(result: Dict[str, Any]) -> List[str]:
    """Sentences computed from the rows, at matched NFE budgets: composition vs the joint baseline,
    correctors vs plain DDPM, NOT vs the same request without it."""
    rows = result["rows"]
    # cells are compared only at one NFE budget and one guidance scale
    settings = sorted({(r.get("nfe_budget"), r.get("weight")) for r in rows}, key=lambda s: tuple((v is None, v or 0) for v in s))
    ks = sorted({r["k"] for r in rows if r["task"].startswith("positions")})
    out = []
    for b, w in settings:
        at = f"NFE {b}" + ("" if w is None else f", α = {w:g}")
        for k in ks:
            comp = _best(rows, task=f"positions K={k}", model="composed", nfe_budget=b, weight=w)
            joint = _best(rows, task=f"positions K={k}", model="joint", nfe_budget=b, weight=w)
            if comp and joint:
                out.append(f"K = {k}, {at}: best composed ({comp['parameterisation']}, {comp['sampler']}) vs best joint "
                           f"({joint['sampler']}): {_versus(comp, joint)}.")
    for r in rows:
        if r["task"] != "NOT":
            continue
        base = next((b for b in rows if b["task"] == "NOT (without the NOT)"
                     and all(b.get(k) == r.get(k) for k in ("model", "parameterisation", "sampler", "nfe_budget", "weight"))), None)
        if base is not None:
            ratio = r["object_at_q"] / base["object_at_q"] if base["object_at_q"] else float("nan")
            out.append(
                f"NOT, {r['parameterisation']}, {r['sampler']}: an object at the requested p in {r['object_at_p']:.3f} of images; "
                f"at the negated q in {r['object_at_q']:.3f} (without the NOT {base['object_at_q']:.3f}, ratio {ratio:.2f})."
            )
    for task in sorted({r["task"] for r in rows if not r["task"].startswith("NOT (")}, key=lambda t: (not t.startswith("positions"), t)):
        for param in ("epsilon", "energy"):
            for b, w in settings:
                at = f"NFE {b}" + ("" if w is None else f", α = {w:g}")
                base = _best(rows, task=task, model="composed", parameterisation=param, sampler="ddpm", nfe_budget=b, weight=w)
                for s in ("ddim", "pc-ula", "pc-mala", "pc-hmc", "annealed-ula") + SMC_SAMPLERS:
                    r = _best(rows, task=task, model="composed", parameterisation=param, sampler=s, nfe_budget=b, weight=w)
                    if base and r:
                        cost = (f" (SMC: {SMC_PARTICLES} particles per image, mean ESS {r['smc_mean_ess_fraction']:.2f} of them)"
                                if r.get("smc_mean_ess_fraction") is not None else "")
                        out.append(f"{task}, {param}: {s} vs ddpm at {at}: {_versus(r, base)}{cost}.")
    return out


def merge(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One result from several runs' results (e.g. cells run in parallel processes): rows
    concatenated, a later part's row replacing an earlier one of the same (task, model,
    parameterisation, sampler, NFE budget, guidance scale); ``settings["parts"]`` keeps every run's settings."""
    rows: Dict[tuple, Dict[str, Any]] = {}
    for part in parts:
        st = part["settings"]
        for r in part["rows"]:
            r = {**r, "nfe_budget": r.get("nfe_budget") or st.get("nfe_budget"), "weight": r.get("weight") or st.get("weight")}
            rows[(r["task"], r["model"], r["parameterisation"], r["sampler"], r["nfe_budget"], r["weight"])] = r
    first = parts[0]["settings"]
    settings = {**first, "parts": [p["settings"] for p in parts],
                "n": sorted({r["n"] for r in rows.values()}), "nfe_budget": sorted({r["nfe_budget"] for r in rows.values()}),
                "ks": sorted({r["k"] for r in rows.values() if r["task"].startswith("positions")}),
                "quick": any(p["settings"].get("quick") for p in parts)}
    missing = sorted(set.intersection(*[set(p.get("missing", [])) for p in parts])) if parts else []
    return {"rows": list(rows.values()), "settings": settings, "missing": missing}


def _g(v) -> str:
    return "" if v is None else f"{v:g}"


def markdown(result: Dict[str, Any]) -> str:
    st = result["settings"]
    lines = ["# Composition on images", ""]
    for part in st.get("parts", [st]):
        cmd = " ".join(["python -m benchmarks.composition_images", *part.get("argv", ["--quick"] if part["quick"] else [])])
        lines.append(f"- `{cmd}` (n = {part['n']} images per cell, NFE budget {part['nfe_budget']}, guidance α = {part['weight']}, "
                     f"radius {part['radius']}, {part['threads']} thread(s); models: {part['models']})")
    if "parts" in st:
        lines += ["", "merged by `python -m benchmarks.composition_images --merge PART.json ...`"]
    lines.append("")
    if st["quick"]:
        lines += ["**Quick mode: random-weight models and a handful of images; the numbers test the pipeline, not the method.**", ""]
    if result["missing"]:
        lines += [f"Missing checkpoints (skipped): {', '.join(result['missing'])}.", ""]
    lines += [
        "Accuracy: every requested position has a detected object within the radius (and none near a negated one);",
        "strict: exactly the requested objects. ± is the binomial standard error.",
        "",
        "| task | model | param | sampler | α | n | accuracy | strict | NFE | s/image |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"positions": 0, "NOT": 1, "NOT (without the NOT)": 1, "attributes": 2}
    for r in sorted(result["rows"], key=lambda r: (order.get(r["task"].split(" K=")[0].split(":")[0], 3), r["task"],
                                                    r["model"] != "composed", r["parameterisation"], str(r.get("weight")))):
        strict = "" if r["strict"] is None else f"{r['strict']:.3f} ± {r['strict_se']:.3f}"
        lines.append(
            f"| {r['task']} | {r['model']} | {r['parameterisation']} | {r['sampler']} | {_g(r.get('weight'))} | {r['n']} | "
            f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {strict} | {r['nfe']} | {r['seconds_per_image']:.3f} |"
        )
    nots = [r for r in result["rows"] if r["task"].startswith("NOT")]
    if nots:
        lines += ["", "Negation: how often an object sits at the requested p and at the negated q, with and without the NOT.", "",
                  "| task | param | sampler | object at p | object at q |", "|---|---|---|---:|---:|"]
        lines += [f"| {r['task']} | {r['parameterisation']} | {r['sampler']} | {r['object_at_p']:.3f} | "
                  f"{r['object_at_q']:.3f} ± {r['object_at_q_se']:.3f} |" for r in nots]
    lines += ["", "## Findings (computed from the table)", ""]
    found = findings(result)
    lines += [f"- {f}" for f in found] or ["- (no comparable cells)"]
    return "\n".join(lines) + "\n"


def plot(result: Dict[str, Any], path: Path) -> None:
    """Accuracy against K per (model, parameterisation, sampler), with ±1 SE bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    series: Dict[str, List[Dict[str, Any]]] = {}
    for r in result["rows"]:
        if r["task"].startswith("positions"):
            series.setdefault(f"{r['model']} {r['parameterisation']} {r['sampler']} NFE {r.get('nfe_budget')} α {r.get('weight')}", []).append(r)
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["k"])
        ax.errorbar([r["k"] for r in rs], [r["accuracy"] for r in rs], yerr=[r["accuracy_se"] for r in rs],
                    marker="o", capsize=2, label=label, linestyle="--" if label.startswith("joint") else "-")
    ax.set_xlabel("K (objects requested)")
    ax.set_ylabel("position accuracy")
    ax.set_ylim(-0.02, 1.02)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xticks(sorted({r["k"] for rs in series.values() for r in rs}))
    ax.set_title("AND of K positions: composed vs jointly conditioned")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random-weight models, few images (a pipeline test)")
    p.add_argument("--n", type=int, default=None, help="images per cell (default 200; quick 4)")
    p.add_argument("--nfe", type=int, default=None, help="NFE budget per sampler (default 50; quick 4)")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(STUDY_SAMPLERS),
                   help="default: every sampler of `ebmcompose scenes sample`; smc / smc-fkc: SMC with SMC_PARTICLES "
                   "particles per image, energy weights (where the model has energies) / FKC weights")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--weight", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="folder of scenes_* checkpoints (default: shipped)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="which cells to run (default: all)")
    p.add_argument("--energy-ks", nargs="+", type=int, default=None, help="K values of the energy-model cells (default: --ks)")
    p.add_argument("--energy-samplers", nargs="+", default=None, choices=list(STUDY_SAMPLERS), help="samplers of the energy model (default: --samplers)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=PATH",
                   help="another position epsilon checkpoint to report beside the shipped one (repeatable)")
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS), help="checkpoints to run (default: all)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART.json",
                   help="write OUT/composition_images.* from these runs' JSON files instead of sampling")
    p.add_argument("--block", type=int, default=None,
                   help="draw each cell's images in blocks of B, each from its own stream (seed, b): the same "
                   "images on any number of torchrun processes (required under torchrun; default: one generator per cell)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.block is not None and args.block < 1:
        p.error(f"--block must be a positive integer, got {args.block}")
    if args.block is None and ec.distributed.launched_by_torchrun():
        p.error("under torchrun the images are drawn in blocks spread over the processes: add --block B (e.g. --block 25)")
    out = Path(args.out)
    if args.merge:
        result = merge([json.loads(Path(f).read_text()) for f in args.merge])
        _write(result, out)
        return 0
    torch.set_num_threads(args.threads)
    n = args.n or (4 if args.quick else 200)
    nfe = args.nfe or (4 if args.quick else 50)
    variants = {}
    for spec in args.variant:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            p.error(f"--variant takes LABEL=PATH, got {spec!r}")
        from toy.scene_model import SceneModel

        variants[label] = SceneModel.load(path, parameterisation="epsilon", max_batch=args.max_batch)
    with ec.distributed.session("cpu") as session:
        with ec.distributed.all_or_none(session):
            result = run(quick=args.quick, n=n, nfe=nfe, ks=args.ks, samplers=args.samplers, weight=args.weight,
                         seed=args.seed, checkpoint_dir=args.checkpoint_dir, max_batch=args.max_batch, tasks=args.tasks,
                         energy_ks=args.energy_ks, energy_samplers=args.energy_samplers, variants=variants,
                         models=args.models, block=args.block, session=session,
                         log=print if session.is_main else (lambda *a, **k: None))
        if session.is_main:  # every rank has the gathered images and scores; one writes
            result["settings"]["argv"] = list(sys.argv[1:] if argv is None else argv)
            result["settings"]["processes"] = session.world_size
            _write(result, out)
    return 0


def _write(result: Dict[str, Any], out: Path) -> None:
    write_json(out / "composition_images.json", result)
    write_text(out / "composition_images.md", markdown(result))
    plot(result, out / "composition_images.png")
    print(f"wrote {out}/composition_images.json, .md, .png ({len(result['rows'])} cells)")


if __name__ == "__main__":
    sys.exit(main())
