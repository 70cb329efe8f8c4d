"""`modeldepot finetune`: train a depot model on a depot dataset into a derived revision."""

from __future__ import annotations

import click

from ._common import emit_json, json_option, parse_spec_arg, pass_app, progress_bar


@click.command("finetune")
@click.argument("base", metavar="BASE[@REV]")
@click.option("--dataset", "dataset_spec", required=True, metavar="ORG/NAME[@REV]",
              help="Dataset repo in the depot to train on.")
@click.option("--task", default="text-classification", show_default=True,
              type=click.Choice(["text-classification", "token-classification"]),
              help="The head to train.")
@click.option("--repo", "target",
              help="Repo to register the fine-tune in (new, or one holding fine-tunes) "
                   "[default: finetuned/BASE-DATASET].")
@click.option("--ref", default="main", show_default=True,
              help="Ref to point at the fine-tuned revision.")
@click.option("--text-column",
              help="Column with the text [default: text; tokens for token-classification].")
@click.option("--label-column",
              help="Column with the labels, a ClassLabel or strings [default: label; ner_tags "
                   "for token-classification].")
@click.option("--split", help="Split to train on [default: train].")
@click.option("--eval-split",
              help="Split to evaluate on [default: validation or test; without either, 10% of "
                   "the training split, held out by a shuffle seeded with --seed].")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=5e-5, show_default=True, help="Learning rate.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True,
              help="Seed for the head's initialisation, the shuffle and dropout.")
@click.option("--max-length", type=int, default=128, show_default=True,
              help="Truncate inputs to this many tokens.")
@click.option("--lora", is_flag=True,
              help="Train LoRA adapters (PEFT) instead of every weight; they are merged into "
                   "the saved weights.")
@click.option("--lora-r", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--threads", type=click.IntRange(min=1),
              help="torch threads for the run [default: torch's choice, one per core].")
@json_option
@pass_app
def finetune_cmd(app, base, dataset_spec, task, target, ref, text_column, label_column, split,
                 eval_split, epochs, lr, batch_size, seed, max_length, lora, lora_r, threads,
                 as_json):
    """Fine-tune BASE[@REV] on a dataset, offline, and register the result as a derived revision.

    The revision holds the trained weights, the tokenizer, a config with the dataset's label
    names and a card describing the training; its recipe names the base model and the dataset
    by commit, with the hyperparameters, library versions and the evaluation figures (see
    'modeldepot show REPO'). Training the same recipe again is a no-op.

    \b
    Example:
      modeldepot finetune sentence-transformers/all-MiniLM-L6-v2 \\
          --dataset modeldepot/sentiment --repo acme/minilm-sentiment --epochs 2 --lr 1e-4
    """
    from ..finetune import finetune

    b, d = parse_spec_arg(base), parse_spec_arg(dataset_spec)
    state = {"bar": None}

    def progress(event: dict) -> None:
        if event["stage"] != "training":
            return
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = progress_bar(event["total"], f"fine-tuning {b.name}", unit="step")
            bar.unit_scale = False
        if event.get("loss") is not None:
            bar.set_postfix_str(f"loss {event['loss']:.4f}")
        bar.update(event["step"] - bar.n)

    try:
        result = finetune(
            app.depot, b.name, b.revision, dataset=d.name, dataset_revision=d.revision,
            task=task, text_column=text_column, label_column=label_column, split=split,
            eval_split=eval_split, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
            max_length=max_length, lora={"r": lora_r} if lora else None, repo=target, ref=ref,
            progress=progress, threads=threads,
        )
    finally:
        if state["bar"] is not None:
            state["bar"].close()
    if as_json:
        emit_json(result)
        return
    recipe = result["recipe"]
    source = (f"{recipe['base']['repo']}@{recipe['base']['commit'][:12]} on "
              f"{recipe['dataset']['repo']}@{recipe['dataset']['commit'][:12]}")
    if not result["created"]:
        moved = f"; {ref} -> {result['commit']}" if result.get("ref_moved") else ""
        click.echo(f"already fine-tuned: {source} with this recipe is {result['repo']}@"
                   f"{result['commit']} (ref {ref}); nothing trained{moved}")
        return
    m, rows, data = recipe["metrics"], recipe["rows"], recipe["dataset"]
    evaluated = data["eval_split"] or f"{data['eval_holdout']:.0%} of {data['split']}, held out"
    click.echo(f"fine-tuned {source} ({recipe['task']}): {result['repo']} {ref} -> "
               f"{result['commit']}")
    click.echo(f"  labels: {', '.join(recipe['labels'])}")
    click.echo(f"  trained on {data['split']} ({rows['train']} rows, {m['steps']} steps): "
               f"final loss {m['train_loss']:.4f}")
    click.echo(f"  held-out accuracy: {m['eval_accuracy']:.4f} on {evaluated} "
               f"({rows['eval']} rows; loss {m['eval_loss']:.4f})")
    click.echo(f"  took {recipe['duration_s']:.1f} s")


def register(group) -> None:
    group.add_command(finetune_cmd)
