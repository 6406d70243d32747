"""`posttrain chat MODEL [--adapter DIR] [--template T] [--system S]`: talk to a model, tokens streamed.

Commands: /reset clears the history, /exit (or end of input) quits. Works with piped stdin too.
"""

from __future__ import annotations

import sys

import torch

from posttrain.commandline import DTYPE_CHOICES, ArgumentParser, positive

COMMANDS = {"/reset": "forget the conversation so far", "/exit": "quit", "/help": "show these commands"}


def parse_args(argv: list[str]):
    p = ArgumentParser(prog="posttrain chat", description=__doc__.splitlines()[0])
    p.add_argument("model", help="model directory or Hub name")
    p.add_argument("--adapter", help="adapter directory to load on top")
    p.add_argument("--template", default="auto", help="chat template (auto | chatml | llama3 | ...)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=positive(int), default=256, help="longest response, in tokens")
    p.add_argument("--temperature", type=positive(float, allow_zero=True), default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=positive(float), default=0.95, help="nucleus sampling mass")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: bf16 on CUDA, else fp32)"
    )
    p.add_argument("--device", default="auto", help="cuda | mps | cpu | auto")
    return p.parse_args(argv)


def reply(model, tok, history: list, args) -> str:
    """Generate the assistant's next turn, printing tokens as they come; returns the text."""
    from transformers import TextStreamer

    from posttrain.data.chat import encode_prompt
    from posttrain.rollout import stop_token_ids

    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tok, history, args.template)], device=device)
    sample = args.temperature > 0
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=args.max_new_tokens,
        do_sample=sample,
        temperature=args.temperature if sample else None,
        top_p=args.top_p if sample else None,
        eos_token_id=stop_token_ids(tok, model),
        pad_token_id=tok.pad_token_id,
        streamer=streamer,
    )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def read_line(interactive: bool) -> str | None:
    try:
        return input("> " if interactive else "")
    except EOFError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from posttrain.data.chat import get_template
    from posttrain.data.schema import Message
    from posttrain.run.common import load_for_inference

    if args.template != "auto":  # an unknown --template is refused now, not at the first message
        get_template(args.template, None)
    model, tok = load_for_inference(args.model, args.adapter, dtype=args.dtype, device=args.device)
    interactive = sys.stdin.isatty()
    start = [Message("system", args.system)] if args.system else []
    history = list(start)
    if interactive:
        print("posttrain chat: " + ", ".join(f"{c} ({d})" for c, d in COMMANDS.items()))
    while (line := read_line(interactive)) is not None:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = list(start)
            print("(history cleared)", flush=True)
            continue
        if text == "/help":
            print("\n".join(f"{c}  {d}" for c, d in COMMANDS.items()))
            continue
        history.append(Message("user", text))
        history.append(Message("assistant", reply(model, tok, history, args)))
    return 0
