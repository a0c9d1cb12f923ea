"""`python -m jaxla.convert import|export SRC OUT`: Hugging Face folders <-> jaxla models."""

from __future__ import annotations

import argparse
import sys

from jaxla.convert import FORMATS, export_checkpoint, import_checkpoint, load_pretrained
from jaxla.models.io import save_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jaxla.convert",
        description="Convert checkpoints between Hugging Face folders (FLA's GLA, transformers' "
                    "Mamba and MiniMax: config.json + safetensors) and jaxla model folders "
                    "(config.json + model.safetensors). Local folders only.",
        epilog="Examples:\n"
               "  python -m jaxla.convert import path/to/gla-340M models/gla-340M\n"
               "  python -m jaxla.generate models/gla-340M --prompt 'The'\n"
               "  python -m jaxla.convert export runs/default-stdlib hf/default --to gla",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face folder -> jaxla model folder")
    imp.add_argument("src", metavar="SRC", help="Hugging Face folder (config.json, safetensors)")
    imp.add_argument("out", metavar="OUT", help="jaxla model folder to write")
    exp = sub.add_parser("export", help="jaxla model or run folder -> Hugging Face folder")
    exp.add_argument("src", metavar="SRC", help="jaxla model folder or run folder")
    exp.add_argument("out", metavar="OUT", help="Hugging Face folder to write")
    exp.add_argument("--to", choices=sorted(FORMATS), default=None,
                     help="architecture (default: the one the model's config fits)")
    exp.add_argument("--step", type=int, default=None, help="run folder: checkpoint step "
                     "(default: the newest)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            imported = import_checkpoint(args.src)
            save_model(imported.model, args.out, eos_token_id=imported.eos_token_id,
                       tokenizer_file=imported.tokenizer_file)
            n = imported.model.num_params()
            print(f"imported {imported.architecture} ({n / 1e6:.2f}M parameters) from "
                  f"{args.src} into {args.out}")
        else:
            loaded = load_pretrained(args.src, step=args.step)
            out = export_checkpoint(loaded.model, args.out, args.to,
                                    eos_token_id=loaded.eos_token_id,
                                    tokenizer_file=loaded.tokenizer_file)
            print(f"exported {args.src} to {out}")
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"SRC {args.src}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
