"""`posttrain demo`: the whole adaptation pipeline on the embedded world, stage by stage, into one directory.

    base -> data -> sft (full, lora, adapter, prefix, prompt) -> rank (K samples, gold labeller) -> rm -> ppo, dpo

Every stage calls the package's public runners in-process (`posttrain.run.sft.run(cfg)` etc. with configs built by
`load_config`), writes into DIR, and records its status, wall time and numbers in the report. A stage whose module is
missing is reported as skipped; a stage that fails is reported as failed with its error, and later stages that need
its output are skipped. Numbers are never made up.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posttrain.atomic import atomic_write_text
from posttrain.demo.base import ensure_base
from posttrain.demo.data import Skip as DataSkip
from posttrain.demo.evaluate import Evaluator
from posttrain.demo.measure import Measure
from posttrain.demo.settings import PEFT_METHODS, DemoSettings
from posttrain.demo.tasks import TRAIN_TASKS
from posttrain.demo.world import World, gold_ranking


class Skip(Exception):
    """A stage cannot run (missing module or missing input); the message says why."""


def _write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _runner(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("posttrain"):
            raise Skip(f"skipped: {e.name} not available") from None
        raise


class Pipeline:
    def __init__(self, out: Path, settings: DemoSettings, log: Callable[[str], None] = print):
        if "," in str(out):  # data sources are passed to the runners as one comma-separated string
            raise ValueError(f"demo output directory must not contain a comma: {out}")
        self.out, self.s, self.log = Path(out), settings, log
        self.world = World(settings.world)
        self.sets = self.world.eval_sets(settings.eval_per_task)
        self.report: dict[str, Any] = {
            "mode": "quick" if settings.quick else "full",
            "stages": {},
            "sft": {},
            "safety": {},
            "base": {},
            "rm": {},
            "ppo": {},
            "dpo": {},
            "sft_best": {},
        }
        self.base_dir: Path | None = None
        self.sft_dirs: dict[str, Path] = {}
        self.best_dir: Path | None = None
        self.rm_dir: Path | None = None

    # ----------------------------------------------------------------------------------------------------------
    # plumbing

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        for name, fn in (
            ("base", self.stage_base),
            ("data", self.stage_data),
            ("sft", self.stage_sft),
            ("rank", self.stage_rank),
            ("rm", self.stage_rm),
            ("ppo", self.stage_ppo),
            ("dpo", self.stage_dpo),
        ):
            self._stage(name, fn)
        self.report["wall_s"] = time.time() - t0
        self.report["threads"] = torch.get_num_threads()
        return self.report

    def _stage(self, name: str, fn: Callable[[], None]) -> None:
        self.log(f"[demo] {name} ...")
        t0 = time.time()
        status, note = "ok", ""
        try:
            fn()
        except (Skip, DataSkip) as e:
            status, note = "skipped", str(e) if str(e).startswith("skipped") else f"skipped: {e}"
        except Exception as e:  # noqa: BLE001 - a failed stage is reported, later independent stages still run
            status, note = "failed", f"{type(e).__name__}: {e}"
            traceback.print_exc()
        wall = time.time() - t0
        self.report["stages"][name] = {"status": status, "wall_s": round(wall, 1), "note": note}
        atomic_write_text(self.out / "report.partial.json", json.dumps(self.report, indent=2, default=str))
        self.log(f"[demo] {name} {status} in {wall:.1f}s" + (f" ({note})" if note else ""))

    def _overrides(self, model: str, data: str, out: str, train: dict[str, Any]) -> list[str]:
        """A stage's command line. The demo owns its directories: the stage's output from an earlier demo is
        removed here, so the run starts afresh instead of being refused as another run in the same place."""
        shutil.rmtree(out, ignore_errors=True)
        base = {
            "model": model,
            "data": data,
            "output_dir": out,
            "train.progress": False,
            "train.save_every": 0,
            "train.seed": self.s.seed,
            "train.resume": False,
            "train.max_length": 256,
        }
        base.update({f"train.{k}": v for k, v in train.items()})
        return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in base.items()]

    def load(self, directory: Path, adapter: Path | None = None):
        """(model, tokenizer) for evaluation, through the package's one inference loader."""
        from posttrain.artifacts import load_for_inference

        return load_for_inference(str(directory), adapter=str(adapter) if adapter else None, dtype="fp32")

    def _need(self, *what: str) -> None:
        for w in what:
            if getattr(self, w) is None:
                raise Skip(f"skipped: needs the output of an earlier stage ({w})")

    # ----------------------------------------------------------------------------------------------------------
    # stages

    def stage_base(self) -> None:
        self.base_dir = ensure_base(self.s.base, self.world, log=self.log)
        info = json.loads((self.base_dir / "pretrain.json").read_text())
        model, tok = self.load(self.base_dir)
        self.tok, self.ev = tok, Evaluator(self.world, tok, seed=self.s.seed)
        acc = self.ev.suite(model, self.sets, ("seen", "heldout_phrasing", "unseen_task"))
        self.report["base"] = {
            **acc,
            "params": info["params"],
            "pretrain_wall_s": round(info["wall_s"], 1),
            "pretrain_tokens": info["tokens"],
            "pretrain_final_loss": info["losses"][-1],
            "dir": str(self.base_dir),
        }
        self.log(f"  base: seen accuracy {acc['seen_accuracy']:.2f}")

    def stage_data(self) -> None:
        from posttrain.demo.data import build_sft_data, pretrain_text

        self._need("base_dir")
        si = self.s.self_instruct_tasks
        self.sft_data, stats = build_sft_data(
            self.world,
            self.out / "data",
            self.s.seed,
            base_dir=str(self.base_dir) if si else None,
            self_instruct_tasks=si,
            chats=self.s.chats,
        )
        n_text = round(self.s.sft_text_share * stats["mix"]["total"])
        if n_text:
            self.sft_data = (
                f"{self.sft_data},{pretrain_text(self.world, self.out / 'data', self.s.seed, n_text)}"
            )
        self.report["data"] = {
            "sft_records": stats["mix"]["total"],
            "pretrain_text_records": n_text,
            "mix": stats["mix"]["counts"],
            "self_instruct": stats["self_instruct"],
            "filter_tasks": stats["filter_tasks"],
        }
        self.log(f"  data: {stats['mix']['total']} records {stats['mix']['counts']}")

    def stage_sft(self) -> None:
        self._need("base_dir")
        if not hasattr(self, "sft_data"):
            raise Skip("skipped: needs the output of an earlier stage (data)")
        sft = _runner("posttrain.run.sft")
        from posttrain.config import load_config

        for method in PEFT_METHODS:
            out = self.out / "sft" / method
            ov = self._overrides(str(self.base_dir), str(self.sft_data), str(out), self.s.sft_train(method))
            cfg = load_config(sft.SFTConfig, None, ov + self.s.peft_overrides(method))
            try:
                with Measure() as m:
                    sft.run(cfg)
                row = self._eval_sft(method, cfg, out)
            except Exception as e:  # noqa: BLE001 - one PEFT method failing must not hide the others
                self.report["sft"][method] = {"status": f"failed: {type(e).__name__}: {e}"}
                traceback.print_exc()
                continue
            row.update(wall_s=round(m.wall_s, 1), peak_mem_mib=round(m.peak_mib, 1), peak_mem_kind=m.kind)
            self.report["sft"][method] = row
            self.sft_dirs[method] = out
            self.log(
                f"  sft {method}: seen {row['seen_accuracy']:.2f} phrasing {row['heldout_phrasing_accuracy']:.2f}"
                f" unseen {row['unseen_task_accuracy']:.2f} trainable {row['trainable_pct']:.2f}% "
                f"{m.wall_s:.0f}s {m.peak_mib:.0f} MiB"
            )
        if not self.sft_dirs:
            raise RuntimeError("every SFT method failed")
        self._choose_best()

    def _eval_sft(self, method: str, cfg, out: Path) -> dict[str, Any]:
        from posttrain.peft import apply_peft, count_parameters

        final = out / "final"
        model, _ = self.load(final) if method == "full" else self.load(self.base_dir, adapter=final)
        samples: list[dict[str, Any]] = []
        row: dict[str, Any] = self.ev.suite(
            model, self.sets, ("seen", "heldout_phrasing", "unseen_task"), samples
        )
        _write_jsonl(samples, out / "eval_samples.jsonl")
        row["identity_accuracy"] = self.ev.accuracy(model, self.sets["identity"])[0]
        row["refusal_rate"] = self.ev.refusal_rate(model, self.sets["harmful"])
        row["false_refusal_rate"] = self.ev.refusal_rate(model, self.sets["benign"])
        fresh, tok = self.load(self.base_dir)
        trainable, total = count_parameters(apply_peft(fresh, cfg.peft, tokenizer=tok, template=cfg.template))
        row["trainable_params"], row["trainable_pct"] = trainable, 100.0 * trainable / total
        return row

    def _choose_best(self) -> None:
        """Best SFT method by held-out-instance accuracy; PPO and DPO need it as a plain model directory."""
        ok = {m: r for m, r in self.report["sft"].items() if "seen_accuracy" in r}
        best = max(ok, key=lambda m: (ok[m]["seen_accuracy"], m == "full"))
        start = best
        if best == "full":
            self.best_dir = self.sft_dirs["full"] / "final"
        else:
            try:
                self.best_dir = self._merge(best)
            except Exception as e:  # noqa: BLE001 - prefix/prompt cannot be merged: fall back to full
                self.log(
                    f"  cannot merge {best} ({e}); RLHF starts from the full fine-tune when there is one"
                )
                start = "full" if "full" in ok else None
                self.best_dir = self.sft_dirs["full"] / "final" if start else None
        self.report["sft_best"].update(method=best, rlhf_start=start, dir=str(self.best_dir))
        if start:  # the numbers of the model PPO and DPO start from, beside theirs
            keys = ("seen_accuracy", "refusal_rate", "false_refusal_rate")
            self.report["sft_best"].update({k: ok[start][k] for k in keys})
        self.report["safety"] = {
            "refusal_rate": ok[best]["refusal_rate"],
            "false_refusal_rate": ok[best]["false_refusal_rate"],
            "method": best,
        }
        self.report["identity_accuracy"] = ok[best]["identity_accuracy"]

    def _merge(self, method: str) -> Path:
        from posttrain.peft import merge_and_unload

        model, tok = self.load(self.base_dir, adapter=self.sft_dirs[method] / "final")
        merged = merge_and_unload(model)
        out = self.out / "sft" / f"{method}_merged"
        merged.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        return out

    def _prompt_items(self, n: int, split: str, seed: str) -> list:
        rng = random.Random(f"{self.s.seed}:{seed}")
        pool = [it for t in TRAIN_TASKS for it in self.world.items(t, split)]
        extra = (
            (self.world.safety_items("train") + self.world.identity_items("train"))
            * self.s.rank_safety_repeat
            if split == "train"
            else []
        )
        return rng.sample(pool, min(n, len(pool))) + extra

    def stage_rank(self) -> None:
        """K samples per prompt from the best SFT model, ranked by the hidden gold scorer (the 'labellers').
        The K samples are split over `rank_temperatures`: a tuned tiny model is nearly deterministic at T = 1, and
        comparisons between identical responses teach nothing (Llama 2 varied the temperature for the same
        reason)."""
        self._need("best_dir")
        model, _ = self.load(self.best_dir)
        temps = self.s.rank_temperatures
        for split, n, name in (
            ("train", self.s.rank_prompts, "rankings"),
            ("heldout", self.s.rank_heldout, "rankings_heldout"),
        ):
            items = self._prompt_items(n, split, name)
            per = [
                self.ev.responses(
                    model, items, sample=True, seed=self.s.seed + j, temperature=temps[j % len(temps)]
                )
                for j in range(self.s.rank_k)
            ]
            recs = [gold_ranking(it, [ro.texts[i] for ro in per]) for i, it in enumerate(items)]
            recs = [r for r in recs if r is not None]
            _write_jsonl(recs, self.out / "data" / f"{name}.jsonl")
            self.report.setdefault("rank", {})[f"{name}_records"] = len(recs)
            self.report["rank"][f"{name}_prompts"] = len(items)
        self.log(f"  rank: {self.report['rank']}")

    def stage_rm(self) -> None:
        self._need("best_dir")
        rm_run = _runner("posttrain.run.rm")
        from posttrain.artifacts.reward import load_reward_model
        from posttrain.config import load_config
        from posttrain.data.preference import read_preferences, to_pairs

        out = self.out / "rm"
        data = self.out / "data" / "rankings.jsonl"
        ov = self._overrides(str(self.best_dir), str(data), str(out), self.s.rm_train)
        cfg = load_config(
            rm_run.RMConfig,
            None,
            ov + [f"rm.loss={self.s.rm_loss}", f"rm.likelihood_coef={self.s.rm_likelihood_coef}"],
        )
        result = rm_run.run(cfg)
        rm = load_reward_model(out / "final", device="cpu")
        pairs = to_pairs(read_preferences(str(self.out / "data" / "rankings_heldout.jsonl")))
        prompts = [[m.to_dict() for m in p.prompt] for p in pairs]
        chosen = rm.score_texts(rm.tokenizer, prompts, [p.chosen[-1].content for p in pairs], rm.template)
        rejected = rm.score_texts(rm.tokenizer, prompts, [p.rejected[-1].content for p in pairs], rm.template)
        acc = sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs))
        self.report["rm"] = {
            "heldout_accuracy": acc,
            "heldout_pairs": len(pairs),
            "final_loss": result.get("final_loss") if isinstance(result, dict) else None,
        }
        self.rm_dir = out / "final"
        self.log(f"  rm: held-out pairwise accuracy {acc:.3f} on {len(pairs)} pairs")

    def _rl_items(self) -> list:
        return self.sets["seen"] + self.sets["harmful"] + self.sets["benign"] + self.sets["identity"]

    def _gold(self, directory: Path, key: str) -> None:
        """Mean gold reward and KL to the SFT start on sampled responses; SFT itself is measured once."""
        ref, _ = self.load(self.best_dir)
        if "gold_reward" not in self.report["sft_best"]:
            self.report["sft_best"].update(
                self.ev.sampled(ref, self._rl_items(), ref=None, samples=self.s.gold_samples)
            )
        model, _ = self.load(directory)
        res = self.ev.sampled(model, self._rl_items(), ref=ref, samples=self.s.gold_samples)
        res["seen_accuracy"] = self.ev.accuracy(model, self.sets["seen"])[0]
        res["refusal_rate"] = self.ev.refusal_rate(model, self.sets["harmful"])
        res["false_refusal_rate"] = self.ev.refusal_rate(model, self.sets["benign"])
        self.report[key].update(res)
        self.log(
            f"  {key}: gold reward {res['gold_reward']:.3f} (sft {self.report['sft_best']['gold_reward']:.3f})"
            f" KL {res['kl']:.3f}"
        )

    def stage_ppo(self) -> None:
        self._need("best_dir", "rm_dir")
        ppo = _runner("posttrain.run.ppo")
        from posttrain.config import load_config

        items = self._prompt_items(self.s.rank_prompts, "train", "ppo")
        data = _write_jsonl(
            [{"prompt": it.prompt, "meta": {"kind": it.meta["kind"]}} for it in items],
            self.out / "data" / "ppo_prompts.jsonl",
        )
        out = self.out / "ppo"
        ov = self._overrides(str(self.best_dir), str(data), str(out), self.s.ppo_train)
        ov += [f"ppo.reward={self.rm_dir}"] + [f"ppo.{k}={v}" for k, v in self.s.ppo_args.items()]
        with Measure() as m:
            ppo.run(load_config(ppo.PPOConfig, None, ov))
        self.report["ppo"]["wall_s"] = round(m.wall_s, 1)
        self._gold(out / "final", "ppo")

    def stage_dpo(self) -> None:
        self._need("best_dir")
        dpo = _runner("posttrain.run.dpo")
        from posttrain.config import load_config

        out = self.out / "dpo"
        ov = self._overrides(
            str(self.best_dir), str(self.out / "data" / "rankings.jsonl"), str(out), self.s.dpo_train
        )
        ov += [f"dpo.{k}={v}" for k, v in self.s.dpo_args.items()]
        with Measure() as m:
            dpo.run(load_config(dpo.DPOConfig, None, ov))
        self.report["dpo"]["wall_s"] = round(m.wall_s, 1)
        self._gold(out / "final", "dpo")
