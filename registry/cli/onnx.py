"""ONNX commands: export a revision (optionally optimized and int8-quantized), list exports."""

from __future__ import annotations

import click

from ._common import (
    emit_json,
    human_size,
    json_option,
    parse_spec_arg,
    pass_app,
    progress_bar,
    repo_type_option,
    table,
)


@click.group("onnx")
def onnx_group():
    """Export revisions to ONNX as derived revisions (validated, with their recipe)."""


@onnx_group.command("export")
@click.argument("spec", metavar="REPO[@REV]")
@click.option("--task", default="auto", show_default=True,
              help="text-classification, token-classification, question-answering, "
                   "feature-extraction, fill-mask, text-generation or text2text-generation; "
                   "auto takes it from the registry's pipeline tag.")
@click.option("--opset", type=click.IntRange(min=1),
              help="ONNX opset [default: optimum's choice for the architecture].")
@click.option("--optimize", type=click.Choice(["O1", "O2", "O3"]),
              help="ONNX Runtime graph optimization: O1 basic, O2 also fuses attention and "
                   "layer norms, O3 also approximates GELU.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Also write an int8 variant (onnx/model_quantized.onnx).")
@click.option("--ref", default="onnx", show_default=True,
              help="Alias to point at the derived revision (clients use it as a revision).")
@click.option("--atol", type=float, default=1e-4, show_default=True,
              help="Largest absolute difference from PyTorch allowed in fp32 outputs.")
@click.option("--min-agreement", type=click.FloatRange(0, 1),
              help="Floor on int8 agreement with fp32 [default: 0.99 top-1 for classifiers; "
                   "for embeddings mean cosine 0.99 and minimum 0.98 (this sets both); 0.75 "
                   "tokens for generation].")
@click.option("--force", is_flag=True,
              help="Register the int8 variant even when its agreement is below the floor.")
@repo_type_option
@json_option
@pass_app
def export_cmd(app, spec, task, opset, optimize, quantize, ref, atol, min_agreement, force,
               repo_type, as_json):
    """Export REPO[@REV] to ONNX and register it as a derived revision of REPO.

    The revision holds the source files plus onnx/; its parent is the source commit. Nothing is
    registered unless the fp32 graph matches PyTorch within --atol and the int8 graph (with
    --quantize) agrees with fp32 above the floor. The same export asked for again is a no-op.

    \b
    Load it with optimum, e.g.:
      ORTModelForSequenceClassification.from_pretrained(REPO, revision="onnx", subfolder="onnx")
    """
    from ..export import STAGES, export_onnx

    s = parse_spec_arg(spec)
    with progress_bar(len(STAGES), f"onnx export {s.name}", unit="step") as bar:
        def step(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        result = export_onnx(
            app.depot, repo_type, s.name, s.revision, task=task, opset=opset, optimize=optimize,
            quantize=quantize, ref=ref, atol=atol, force=force, progress=step,
            min_agreement=min_agreement,
        )
    if as_json:
        emit_json(result)
        return
    source = f"{s.name}@{result['parent_commit'][:12]}"
    if not result["created"]:
        moved = f"; {ref} -> {result['commit']}" if result.get("ref_moved") else ""
        click.echo(f"already exported: {source} with this recipe is {result['commit']} "
                   f"(ref {ref}); nothing exported{moved}")
        return
    recipe = result["recipe"]
    what = [recipe["task"], f"opset {recipe['opset']}"]
    what += [f"optimize {recipe['optimize']}"] if recipe.get("optimize") else []
    what += [recipe["quantize"]] if recipe.get("quantize") else []
    click.echo(f"exported {source} to ONNX ({', '.join(what)}): {ref} -> {result['commit']}")
    for line in validation_lines(recipe):
        click.echo(f"  {line}")
    click.echo(f"  files: {', '.join(result['files'])}")
    click.echo(f"  took {recipe['duration_s']:.1f} s")


def validation_lines(recipe: dict) -> list[str]:
    from ..export import METRIC_LABELS

    v = recipe.get("validation") or {}
    lines = []
    diffs = (v.get("fp32") or {}).get("max_abs_diff") or {}
    if diffs:
        worst = max(diffs.values())
        lines.append(f"fp32 vs PyTorch: max abs diff {worst:.2e} (atol {v['atol']:g})")
    int8 = v.get("int8")
    if int8:
        forced = " FORCED: below the floor" if int8.get("forced") else ""
        label = METRIC_LABELS[int8["metric"]]
        if "mean" in int8:
            lines.append(f"int8 vs fp32 ({v.get('samples')} texts): {label} min "
                         f"{int8['value']:.4f} (floor {int8['floor']:g}), mean {int8['mean']:.4f} "
                         f"(floor {int8['mean_floor']:g}){forced}")
        else:
            lines.append(f"int8 vs fp32: {label} {int8['value']:.4f} "
                         f"(floor {int8['floor']:g}){forced}")
    return lines


@onnx_group.command("list")
@click.argument("repo", required=False)
@json_option
@pass_app
def list_cmd(app, repo, as_json):
    """List ONNX derived revisions (of REPO, or of every repo), newest first."""
    from ..export import list_exports

    name = parse_spec_arg(repo).name if repo else None
    rows = list_exports(app.depot, name)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no ONNX exports yet; make one with 'modeldepot onnx export REPO'")
        return
    click.echo(table(
        [(r["repo"], r["commit"][:12], r["parent_commit"][:12], ",".join(r["refs"]) or "-",
          r["task"], r["opset"], r["optimize"] or "-", r["quantize"] or "-",
          f"{r['fp32_max_abs_diff']:.1e}" if r["fp32_max_abs_diff"] is not None else "-",
          _int8_cell(r["int8"]), human_size(r["size"]),
          r["created_at"][:19])
         for r in rows],
        ["REPO", "COMMIT", "PARENT", "REFS", "TASK", "OPSET", "OPT", "QUANT", "FP32 DIFF",
         "INT8 AGREE", "SIZE", "CREATED"],
    ))


def _int8_cell(int8: dict | None) -> str:
    if not int8:
        return "-"
    return f"{int8['value']:.3f}" + (" FORCED" if int8.get("forced") else "")


def register(group) -> None:
    group.add_command(onnx_group)
