"""``numaplan chat``: an interactive multi-turn chat on the pinned workers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from numaplan.cli.help import HELP
from numaplan.cli.run import (
    add_sampling_args,
    add_session_args,
    options_from_args,
    sampling_from_args,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help=HELP["chat"], description=HELP["chat"])
    add_session_args(p)
    p.add_argument("--system", metavar="TEXT", help=HELP["system"])
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=HELP["max_new_tokens"])
    add_sampling_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from numaplan.chat import ChatSession
    from numaplan.conversation import conversation_from_config
    from numaplan.model.config import MLC_CONFIG_NAME
    from numaplan.runtime.session import NumaRuntime
    from numaplan.tokenizer import Tokenizer

    cfg = Path(args.model_dir) / MLC_CONFIG_NAME
    doc = json.loads(cfg.read_text())
    conv = conversation_from_config(doc, path=cfg)
    tokenizer = Tokenizer(args.model_dir)
    params = sampling_from_args(args, default_max=256)
    eos = doc.get("eos_token_id", [])
    interactive = sys.stdin.isatty()
    with NumaRuntime(args.model_dir, args.lib, plan_path=args.plan,
                     options=options_from_args(args)) as rt:
        chat = ChatSession(rt.model, tokenizer, conv, system=args.system,
                           eos_ids=list(eos) if isinstance(eos, list) else [eos])
        while True:
            if interactive:
                print(">>> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line or not line.strip():
                break
            chat.turn(line.rstrip("\n"), params,
                      on_text=lambda _, t: (sys.stdout.write(t), sys.stdout.flush()))
            print(flush=True)
        chat.close()
    return 0
