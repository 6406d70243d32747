"""The demo's alignment stages: K sampled responses ranked by the gold labeller, the reward model, PPO and DPO from
the best SFT model, and GRPO with the task answers as a verifiable reward (RLVR), each scored by mean gold reward,
held-out accuracy and KL to SFT. A mixin of `pipeline.Pipeline` (which holds the
world, the evaluator, the settings and the directories these stages read).
"""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path

from posttrain.atomic import atomic_write_text
from posttrain.demo.measure import Measure
from posttrain.demo.tasks import TRAIN_TASKS
from posttrain.demo.world import gold_ranking


class Skip(Exception):
    """A stage cannot run (missing module or missing input); the message says why."""


def runner(module: str):
    """A package runner module, or Skip when that part of the package is not there."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("posttrain"):
            raise Skip(f"skipped: {e.name} not available") from None
        raise


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


class AlignmentStages:
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
            write_jsonl(recs, self.out / "data" / f"{name}.jsonl")
            self.report.setdefault("rank", {})[f"{name}_records"] = len(recs)
            self.report["rank"][f"{name}_prompts"] = len(items)
        self.log(f"  rank: {self.report['rank']}")

    def stage_rm(self) -> None:
        self._need("best_dir")
        rm_run = runner("posttrain.run.rm")
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
        ppo = runner("posttrain.run.ppo")
        from posttrain.config import load_config

        items = self._prompt_items(self.s.rank_prompts, "train", "ppo")
        data = write_jsonl(
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
        dpo = runner("posttrain.run.dpo")
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

    def stage_grpo(self) -> None:
        """RL with a verifiable reward: GRPO from the best SFT model on training-task prompts, rewarded 1 when a
        response is the prompt's answer (the built-in `normalized` checker against `meta.answer`), no reward
        model. KL (k3) to the SFT model in the loss."""
        self._need("best_dir")
        ppo = runner("posttrain.run.ppo")
        from posttrain.config import load_config

        rng = random.Random(f"{self.s.seed}:grpo")
        pool = [it for t in TRAIN_TASKS for it in self.world.items(t, "train")]
        n = self.s.grpo_steps * self.s.grpo_rollout // self.s.grpo_k
        items = rng.sample(pool, min(n, len(pool)))
        data = write_jsonl(
            [{"prompt": it.prompt, "meta": {"answer": it.answer, "kind": it.meta["kind"]}} for it in items],
            self.out / "data" / "grpo_prompts.jsonl",
        )
        out = self.out / "grpo"
        ov = self._overrides(str(self.best_dir), str(data), str(out), self.s.grpo_train)
        ov += [f"ppo.{k}={v}" for k, v in self.s.grpo_args.items()]
        with Measure() as m:
            ppo.run(load_config(ppo.GRPOConfig, None, ov))
        self.report["grpo"]["wall_s"] = round(m.wall_s, 1)
        self._gold(out / "final", "grpo")
