"""`oneepoch export RUN OUT`: a run's latest checkpoint as a Hugging Face folder
(oneepoch.export)."""

from __future__ import annotations

from oneepoch.cliflags import add_output_flags, print_json

HELP = "write a run's latest checkpoint as a Hugging Face transformers model folder"
DESCRIPTION = """\
Write RUN's latest checkpoint to OUT as a GPT-2 model folder that transformers loads offline
with AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT):
safetensors weights, config.json, and the dataset's tokenizer as tokenizer.json.
"""


def add_arguments(p) -> None:
    p.add_argument("run", help="run directory (the --out of `oneepoch train`)")
    p.add_argument("out", help="new or empty folder to write")
    p.add_argument("--format", default="hf", help="export format: hf (the default)")
    p.add_argument(
        "--data", default=None, help="dataset directory, if it moved since training (its tokenizer)"
    )
    add_output_flags(p, "what was written")


def run(args) -> int:
    from oneepoch.export import export

    info = export(args.run, args.out, fmt=args.format, data_dir=args.data)
    if args.json:
        return print_json(info)
    print(
        f"wrote {info['out']} ({info['format']}, step {info['step']}): {', '.join(info['files'])}"
    )
    return 0
