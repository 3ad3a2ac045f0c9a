"""Parameters SB adds to timm networks at the hidden widths one might give it: the network's own SE width (through
replace_attention), timm's SE ratio 1/16, and sbattn's default 0.5 (what SB gets where timm passes no ratio).
Prints the Markdown table of docs/interop.md. Run in the interoperability environment:

    .venv-interop/bin/python benchmarks/ratio_guidance.py
"""
import functools

import timm
import torch

import sbattn

# (name, how SB enters): "attn_layer" where timm's ResNet takes it in block_args, "replace" where the network has
# its own SE modules.
FAMILIES = [("resnet18", "attn_layer"), ("resnet50", "attn_layer"), ("seresnext26d_32x4d", "replace"),
            ("regnety_002", "replace"), ("rexnet_100", "replace"), ("mobilenetv3_large_100", "replace"),
            ("ghostnet_100", "replace"), ("efficientnet_b0", "replace")]
RATIOS = {"1/16": 1 / 16, "0.5": 0.5}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def with_sb(name: str, route: str, ratio: float | None) -> torch.nn.Module:
    if route == "attn_layer":
        layer = functools.partial(sbattn.ShiftBalance, ratio=ratio)
        return timm.create_model(name, block_args=dict(attn_layer=layer))
    model = timm.create_model(name)
    sbattn.replace_attention(model, "sb", **({} if ratio is None else {"ratio": ratio}))
    return model


def main() -> None:
    print("| network | parameters | SB at its own SE's width | SB at 1/16 | SB at 0.5 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, route in FAMILIES:
        with torch.device("meta"):
            base = params(timm.create_model(name))
            own = params(with_sb(name, route, None)) - base if route == "replace" else None
            added = {label: params(with_sb(name, route, r)) - base for label, r in RATIOS.items()}
        if route == "replace":  # the network's SE is replaced: against the network as timm ships it
            cells = [f"{own:+,} ({100 * own / base:+.2f}%)"]
        else:
            cells = ["no SE"]
        cells += [f"{a:+,} ({100 * a / base:+.2f}%)" for a in added.values()]
        print(f"| {name} | {base:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
