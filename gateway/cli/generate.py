"""``modelport generate``: stream tokens from a generation model as the server produces them."""

from __future__ import annotations

import time

import typer

from gateway.cli.app import app, err, fail, gateway_config, out, print_json
from modelport.client import ClientError


def parse_ids(text: str) -> list[int]:
    """'1,2,3' (or spaces) -> [1, 2, 3]."""
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--input-ids must be integers separated by commas, got {text!r}") from None
    if not ids:
        raise ValueError("--input-ids is empty; give at least one token id (e.g. --input-ids 1,2,3)")
    return ids


@app.command()
def generate(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Served generation model name."),
    input_ids: str = typer.Option(..., "--input-ids", help="Prompt token ids, e.g. 1,2,3."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Tokens to generate (request_output_len)."),
    temperature: float = typer.Option(None, help="Sampling temperature (with --top-k/--top-p)."),
    top_k: int = typer.Option(None, "--top-k", help="Sample among the k most likely tokens (0/1 = greedy)."),
    top_p: float = typer.Option(None, "--top-p", help="Sample from the smallest set reaching this probability."),
    seed: int = typer.Option(None, help="Random seed of the sampler."),
    end_id: int = typer.Option(None, "--end-id", help="Stop when this token id is generated."),
    version: str = typer.Option("", help="Model version (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the tokens and timings as JSON at the end."),
) -> None:
    """Generate tokens over KServe v2 streaming (ModelStreamInfer) and print each one as it arrives."""
    try:
        ids = parse_ids(input_ids)
    except ValueError as e:
        raise fail(str(e), 2) from None
    tokens: list[int] = []
    start = time.perf_counter()
    first = None
    try:
        with gateway_config(ctx).client() as client:
            for token in client.generate(name, ids, max_tokens=max_tokens, version=version, temperature=temperature,
                                         top_k=top_k, top_p=top_p, seed=seed, end_id=end_id):
                first = first if first is not None else time.perf_counter() - start
                tokens.append(token)
                if not as_json:
                    out.print(token, end=" ", highlight=False)
                    out.file.flush()
    except ClientError as e:
        if tokens and not as_json:
            out.print()
        raise fail(f"generate failed: {e.code}: {e.message}") from None
    total = time.perf_counter() - start
    rate = (len(tokens) - 1) / (total - first) if first is not None and len(tokens) > 1 and total > first else 0.0
    if as_json:
        print_json({"model_name": name, "input_ids": ids, "output_ids": tokens,
                    "time_to_first_token_ms": round((first or 0) * 1000, 2), "tokens_per_s": round(rate, 1)})
        return
    out.print()
    err.print(f"{len(tokens)} tokens, first after {(first or 0) * 1000:.1f} ms, {rate:.1f} tokens/s")
