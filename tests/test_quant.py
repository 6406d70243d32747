"""Quantised bases (QLoRA) on CPU through bitsandbytes: the 4-bit model against its dequantised reference, QLoRA
training in every trainer, the adapter in posttrain and in `peft`, `posttrain merge` onto the dequantised base, the
8-bit optimisers' exact resume, and the config checks around them."""

import json
import math

import pytest
import torch

from helpers import training_files
from posttrain.cli import main as cli
from posttrain.config import ConfigError, SFTConfig, load_config
from posttrain.models import load_model

bnb = pytest.importorskip("bitsandbytes")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return training_files(tmp_path_factory.mktemp("quant"), 16)


def ids(n=2, length=12, seed=0):
    return torch.randint(4, 500, (n, length), generator=torch.Generator().manual_seed(seed))


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def base_args(files, out, *extra):
    return [
        f"model={files / 'model'}",
        f"data={files / 'sft.jsonl'}",
        f"output_dir={out}",
        "train.batch_size=4",
        "train.progress=false",
        "peft.method=lora",
        *extra,
    ]


@pytest.mark.parametrize("quantization", ["nf4", "fp4", "int8"])
def test_quantised_logits_match_the_dequantised_reference(files, quantization):
    """The quantised model computes what a plain model holding its dequantised weights computes (4-bit: the same
    fp32 matmul after dequantising, to 1e-4; int8 multiplies in fp16 on CPU: 2e-2); both differ from the original
    weights' logits (quantisation error), and the linears' bytes fall by more than 80% (4-bit) / 70% (int8)."""
    from posttrain.quant import dequantize, describe, model_quantization, quantized_linears, weight_bytes

    plain = load_model(str(files / "model"), dtype="fp32", device="cpu")
    q = load_model(str(files / "model"), dtype="fp32", device="cpu", quantization=quantization)
    names = quantized_linears(q)
    assert len(names) == 14 and model_quantization(q) == quantization  # 2 layers x (4 attention + 3 MLP)
    assert describe(q).startswith(
        f"quantised ({quantization}): 14 linear layers holding 52.8% of the parameters"
    )
    x = ids()
    with torch.no_grad():
        got = q(x).logits
        want = dequantize(q).eval()(x).logits  # dequantize works in place: the quantised logits came first
        original = plain(x).logits
    assert not quantized_linears(q) and describe(q) is None
    torch.testing.assert_close(got, want, atol=1e-4 if quantization != "int8" else 2e-2, rtol=0)
    assert (got - original).abs().max() > 1e-3
    plain_linear = sum(plain.get_submodule(n).weight.numel() * 4 for n in names)
    quant = load_model(str(files / "model"), dtype="fp32", device="cpu", quantization=quantization)
    saved = weight_bytes(plain) - weight_bytes(quant)  # 4-bit: 4 -> 0.5 bytes a weight plus block constants
    assert saved >= plain_linear * (0.7 if quantization == "int8" else 0.8), (saved, plain_linear)


@pytest.mark.parametrize("quantization", ["nf4", "fp4"])
def test_inference_and_training_forwards_of_a_4bit_model_agree_exactly(files, quantization):
    """Eval mode without gradients (rollouts, the reference, evaluation) and train mode with gradients (the
    policy) give the same logits to the bit. bitsandbytes alone takes a bf16 kernel for the first on CPUs with
    AVX512-BF16 (max difference 0.03 on the tiny model here) and repacks the weight in place."""
    q = load_model(str(files / "model"), dtype="fp32", device="cpu", quantization=quantization)
    codes = {n: p.detach().clone() for n, p in q.named_parameters() if p.dtype == torch.uint8}
    x = ids()
    with torch.no_grad():
        inference = q.eval()(x).logits
    emb = q.get_input_embeddings()(x).detach().requires_grad_(True)
    training = q.train()(inputs_embeds=emb).logits
    assert torch.equal(inference, training.detach())
    assert all(torch.equal(p, codes[n]) for n, p in q.named_parameters() if n in codes)


def test_a_4bit_base_stays_frozen_and_quantised_under_qlora_sft_that_lowers_the_loss(files, tmp_path):
    """QLoRA SFT with gradient checkpointing: the loss falls, only LoRA (fp32) trains, the base linears stay 4-bit
    and their codes unchanged; the adapter saved in final/ reloads in posttrain with the training model's logits."""
    from posttrain.artifacts import load_for_inference
    from posttrain.run.common import setup_model
    from posttrain.run.sft import run

    args = base_args(
        files, tmp_path / "run", "model.quantization=nf4", "train.gradient_checkpointing=true",
        "train.max_steps=30", "train.lr=1e-2", "peft.lora.r=8",
    )  # fmt: skip
    cfg = load_config(SFTConfig, None, args)
    model, _ = setup_model(cfg, verbose=False)
    codes = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    assert codes and all(not p.requires_grad for p in model.parameters() if p.dtype == torch.uint8)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    from posttrain.peft import count_parameters

    plain, _ = setup_model(load_config(SFTConfig, None, [a for a in args if "quantization" not in a]), False)
    assert count_parameters(model) == count_parameters(plain)  # a 4-bit weight counts as its logical size
    result = run(cfg)
    losses = [r["loss"] for r in rows(tmp_path / "run" / "metrics.jsonl")]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses  # 6.05 -> 5.61 on this toy data
    assert result["steps"] == 30
    saved = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA"
    trained, _ = load_for_inference(str(files / "model"), str(tmp_path / "run" / "final"), "fp32", "cpu")
    from posttrain.quant import model_quantization

    assert model_quantization(trained) == "nf4"  # the adapter's config says which base it was trained on
    assert torch.equal(
        next(p for n, p in trained.named_parameters() if p.dtype == torch.uint8),
        next(iter(codes.values())),
    )  # the same deterministic quantisation of the same weights: the training base, code for code
    # the model as training left it, rebuilt from the run's final state, computes what the reloaded one computes
    x = ids()
    with torch.no_grad():
        again, _ = load_for_inference(str(files / "model"), str(tmp_path / "run" / "final"), "fp32", "cpu")
        torch.testing.assert_close(trained(x).logits, again(x).logits, atol=0, rtol=0)


@pytest.fixture(scope="module")
def qlora_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "run"
    args = base_args(files, out, "model.quantization=nf4", "train.max_steps=6", "train.lr=2e-2")
    assert cli(["sft", *args]) == 0
    return out / "final"


def test_the_qlora_adapter_loads_in_peft_on_the_same_4bit_base_with_our_logits(files, qlora_run):
    """`peft.PeftModel.from_pretrained(transformers' nf4 base, final/)` gives posttrain's logits: same adapter
    names, same scaling, same base computation."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from posttrain.artifacts import load_for_inference
    from posttrain.quant import one_kernel

    ours, _ = load_for_inference(str(files / "model"), str(qlora_run), "fp32", "cpu")
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(
        files / "model", quantization_config=quant, device_map="cpu", dtype=torch.float32
    )
    one_kernel(base)  # bitsandbytes' own bf16 inference kernel (AVX512-BF16 CPUs) would differ by ~5e-3
    theirs = PeftModel.from_pretrained(base, qlora_run).eval()
    x = ids()
    with torch.no_grad():
        a, b = ours(x).logits, theirs(x).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with theirs.disable_adapter(), torch.no_grad():
        assert (
            theirs(x).logits - a
        ).abs().max() > 1e-4  # the adapter changes the outputs: the match means something


def test_merge_writes_the_dequantised_base_plus_the_adapter_and_says_so(files, qlora_run, tmp_path, capsys):
    """`posttrain merge` of a QLoRA adapter: a plain fp32 model directory (no quantisation_config) whose logits are
    the QLoRA model's, and a line saying it merged into the dequantised base."""
    from transformers import AutoModelForCausalLM

    from posttrain.artifacts import load_for_inference

    out = tmp_path / "merged"
    code = cli(["merge", "--model", str(files / "model"), "--adapter", str(qlora_run), "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "nf4-quantised base" in err and "dequantised" in err
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    qlora, _ = load_for_inference(str(files / "model"), str(qlora_run), "fp32", "cpu")
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, qlora(x).logits, atol=1e-4, rtol=0)


def test_dpo_on_a_4bit_base_starts_at_ln2(files, tmp_path):
    """The reference is the 4-bit base with the adapter off; at step 0 the policy equals it: loss ln 2."""
    args = [a.replace("sft.jsonl", "prefs.jsonl") for a in base_args(files, tmp_path / "dpo")]
    assert cli(["dpo", *args, "model.quantization=nf4", "train.max_steps=2"]) == 0
    first = rows(tmp_path / "dpo" / "metrics.jsonl")[0]
    assert math.isclose(first["loss"], math.log(2), abs_tol=1e-5), first


def test_ppo_on_a_4bit_base_has_zero_kl_at_step_0(files, tmp_path):
    ppo = [
        "ppo.reward=helpers:length_reward",
        "ppo.rollout_batch_size=4",
        "ppo.mini_batch_size=4",
        "ppo.max_new_tokens=4",
    ]
    assert (
        cli(["ppo", *base_args(files, tmp_path / "ppo"), *ppo, "model.quantization=nf4", "train.max_steps=2"])
        == 0
    )
    first = rows(tmp_path / "ppo" / "metrics.jsonl")[0]
    assert first["kl"] == 0.0 and math.isfinite(first["loss"])


def test_reward_model_and_a_separate_critic_train_on_a_4bit_base(files, tmp_path):
    """The reward model (LoRA + its fp32 score head) and PPO with a separate critic (a copy of the 4-bit policy with
    its own LoRA) run on an nf4 base and save their artefacts."""
    prefs = [a.replace("sft.jsonl", "prefs.jsonl") for a in base_args(files, tmp_path / "rm")]
    assert cli(["rm", *prefs, "model.quantization=nf4", "train.max_steps=2"]) == 0
    assert (tmp_path / "rm" / "final" / "adapter_config.json").is_file()
    ppo = ["ppo.reward=helpers:length_reward", "ppo.rollout_batch_size=4", "ppo.mini_batch_size=4"]
    args = [*base_args(files, tmp_path / "ppo"), *ppo, "ppo.max_new_tokens=4", "ppo.value_head=separate"]
    assert cli(["ppo", *args, "model.quantization=nf4", "train.max_steps=2"]) == 0
    assert rows(tmp_path / "ppo" / "metrics.jsonl")[0]["kl"] == 0.0


@pytest.mark.parametrize("method", ["adapter", "prefix", "prompt"])
def test_every_peft_method_trains_on_a_4bit_base(files, tmp_path, method):
    out = tmp_path / method
    args = [a for a in base_args(files, out) if a != "peft.method=lora"]
    assert cli(["sft", *args, f"peft.method={method}", "model.quantization=nf4", "train.max_steps=2"]) == 0
    assert (out / "final" / "adapter_config.json").is_file()


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit"])
def test_an_8bit_optimiser_resumes_exactly(tmp_path, optimizer):
    """Interrupted after a checkpoint and resumed: the same losses and parameters as one straight run; the
    moments of the 64x64 matrices really are 8-bit (uint8 states)."""
    from posttrain.models import tiny_model
    from posttrain.objectives.sft import SFTObjective
    from posttrain.train.log import read_metrics
    from posttrain.train.loop import fit
    from posttrain.train.optim import build_optimizer
    from test_loop import Crash, ListSource, cfg, random_samples

    c = cfg(max_steps=6, save_every=2, keep_last=1, optimizer=optimizer, lr=1e-2)
    straight = tiny_model("llama")
    fit(straight, SFTObjective(), ListSource(random_samples(24), 4, 1), c, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model("llama"), Crash(4), ListSource(random_samples(24), 4, 1), c, tmp_path / "b")
    resumed = tiny_model("llama")
    fit(resumed, SFTObjective(), ListSource(random_samples(24), 4, 1), c, tmp_path / "b")
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    opt = build_optimizer(tiny_model("llama"), c)
    assert type(opt).__module__.startswith("bitsandbytes")
    model = tiny_model("llama")
    opt = build_optimizer(model, c)
    model(ids(), labels=ids()).loss.backward()
    opt.step()
    assert any(t.dtype == torch.uint8 for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def test_config_checks(files):
    """Full fine-tuning of a quantised base, an unknown attention kernel: config errors naming the key; the model
    section's shorthand and its keys combine in either order."""
    model = f"model={files / 'model'}"
    with pytest.raises(ConfigError, match="model.quantization: must be used with a PEFT method"):
        load_config(SFTConfig, None, [model, "model.quantization=nf4"])
    with pytest.raises(ConfigError, match="model.attn_implementation"):
        load_config(SFTConfig, None, [model, "model.attn_implementation=flash"])
    with pytest.raises(ConfigError, match="model.quantization: 'nf5' is not one of"):
        load_config(SFTConfig, None, [model, "model.quantization=nf5"])
    a = load_config(SFTConfig, None, [model, "model.quantization=int8", "peft.method=lora"])
    b = load_config(SFTConfig, None, ["model.quantization=int8", model, "peft.method=lora"])
    c = load_config(
        SFTConfig, None, [f"model.name={files / 'model'}", "model.quantization=int8", "peft.method=lora"]
    )
    assert a.model == b.model == c.model and a.model.name == str(files / "model")
    assert SFTConfig(model="x").model.name == "x"


def test_config_file_shorthand_with_keys_on_the_command_line(files, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {files / 'model'}\npeft:\n  method: lora\n")
    cfg = load_config(SFTConfig, path, ["model.quantization=nf4"])
    assert cfg.model.name == str(files / "model") and cfg.model.quantization == "nf4"
    path.write_text(f"model:\n  name: {files / 'model'}\n  quantization: fp4\npeft:\n  method: lora\n")
    cfg = load_config(SFTConfig, path, ["model=other"])
    assert cfg.model.name == "other" and cfg.model.quantization == "fp4"
    path.write_text("model: first\npeft:\n  method: lora\n")
    cfg = load_config(SFTConfig, path, ["model.name=second", "model.double_quant=false"])
    assert cfg.model.name == "second" and cfg.model.double_quant is False


def test_attn_implementation_reaches_transformers_and_a_missing_kernel_is_one_line(files, capsys):
    m = load_model(str(files / "model"), dtype="fp32", device="cpu", attn_implementation="eager")
    assert m.config._attn_implementation == "eager"
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    capsys.readouterr()
    args = [
        "sft",
        f"model={files / 'model'}",
        f"data={files / 'sft.jsonl'}",
        "model.attn_implementation=flash_attention_2",
    ]
    assert cli([*args, "output_dir=/tmp/posttrain-never-written", "train.progress=false"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "model.attn_implementation=flash_attention_2" in err[0]
        and "FlashAttention2" in err[0]
    )


def test_a_quantised_layer_cannot_be_trained_whole_or_merged(files):
    from posttrain.peft import PeftConfig, apply_peft, merge_and_unload

    q = load_model(str(files / "model"), dtype="fp32", device="cpu", quantization="nf4")
    cfg = PeftConfig(method="lora")
    cfg.lora.target_modules = ["q_proj"]
    cfg.modules_to_save = ["down_proj"]
    with pytest.raises(Exception, match="quantised layer cannot be trained whole"):
        apply_peft(q, cfg)
    q = apply_peft(
        load_model(str(files / "model"), dtype="fp32", device="cpu", quantization="nf4"),
        PeftConfig(method="lora"),
    )
    with pytest.raises(Exception, match="cannot merge a LoRA adapter into a quantised base layer"):
        merge_and_unload(q)


def test_an_adapter_chain_on_a_4bit_base_is_refused_in_one_line(files, qlora_run, tmp_path, capsys):
    """A new adapter over a loaded QLoRA adapter would need the loaded one merged into the 4-bit weights: refused,
    naming `posttrain merge`, exit 1, nothing trained."""
    args = [a.replace("sft.jsonl", "prefs.jsonl") for a in base_args(files, tmp_path / "dpo")]
    code = cli(["dpo", *args, "model.quantization=nf4", f"adapter={qlora_run}", "train.max_steps=2"])
    err = [
        x for x in capsys.readouterr().err.splitlines() if x.strip() and not x.startswith("Loading weights")
    ]
    assert code == 1 and len(err) == 1 and "posttrain merge" in err[0], err
    assert not (tmp_path / "dpo" / "metrics.jsonl").exists()


def test_the_memory_benchmarks_run_and_qlora_halves_the_weights(tmp_path):
    """`python -m posttrain.bench.peft_methods` (a tiny epoch) and `posttrain.bench.quant_memory`'s measurement:
    QLoRA trains the same parameters as LoRA on fewer weight bytes."""
    from posttrain.bench.peft_methods import run, table
    from posttrain.bench.quant_memory import loaded_bytes
    from posttrain.bench.workload import bench_model
    from posttrain.models import tiny_model

    bench_model().save_pretrained(tmp_path / "bench")
    lora, qlora = (run(m, sequences=4, saved=str(tmp_path / "bench")) for m in ("lora", "qlora"))
    assert (
        lora["trainable_params"] == qlora["trainable_params"]
        and qlora["weight_mib"] < 0.6 * lora["weight_mib"]
    )
    assert "| qlora |" in table([lora, qlora])
    model = tiny_model("llama")
    assert loaded_bytes(model, "fp32", "nf4") < loaded_bytes(model, "fp32", "none")
    assert loaded_bytes(model, "bf16", "nf4") < loaded_bytes(model, "bf16", "none")


def test_a_model_transformers_cannot_quantise_is_refused(tmp_path):
    """Falcon's decoder linears are FalconLinear, which transformers' bitsandbytes conversion skips: loading it with
    nf4 would silently give the full-precision model, so it is one error line instead."""
    from posttrain.errors import UserError
    from posttrain.models import tiny_model

    tiny_model("falcon").save_pretrained(tmp_path / "falcon")
    with pytest.raises(UserError, match="quantised none of .* linear layers"):
        load_model(str(tmp_path / "falcon"), dtype="fp32", device="cpu", quantization="nf4")


@pytest.mark.parametrize(
    "arch", ["llama", "qwen2", "gemma2", "phi3", "gpt2", "opt", "mixtral", "deepseek_v3"]
)
def test_qlora_across_architectures(tmp_path, arch):
    """Each family quantised to nf4: the 4-bit model computes its dequantised reference's logits, LoRA on every
    linear trains (loss falls in a few steps) without touching the codes, and save -> reload gives the same logits."""
    from posttrain.artifacts import load_for_inference, save_final
    from posttrain.config import SFTConfig
    from posttrain.models import tiny_model, tiny_tokenizer
    from posttrain.peft import LoraConfig, PeftConfig, apply_peft
    from posttrain.quant import dequantize, quantized_linears

    tiny_model(arch).save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    q = load_model(str(tmp_path / "base"), dtype="fp32", device="cpu", quantization="nf4")
    assert quantized_linears(q)
    x = ids()
    with torch.no_grad():
        got = q(x).logits
        ref = load_model(str(tmp_path / "base"), dtype="fp32", device="cpu", quantization="nf4")
        torch.testing.assert_close(got, dequantize(ref)(x).logits, atol=1e-4, rtol=0)
    model = apply_peft(q, PeftConfig(method="lora", lora=LoraConfig(r=8, target_modules=["all-linear"])))
    codes = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(torch.equal(p, codes[n]) for n, p in model.named_parameters() if n in codes)
    cfg = SFTConfig(model=str(tmp_path / "base"))
    cfg.model.quantization = "nf4"
    save_final(model, None, cfg, tmp_path / "final")
    again, _ = load_for_inference(str(tmp_path / "base"), str(tmp_path / "final"), "fp32", "cpu")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits, atol=1e-6, rtol=0)
