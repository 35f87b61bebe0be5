"""``nerloop simulate``: the active-learning loop on the ML core alone, gold labels standing in for annotators."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.table import Table

from active_learning.strategies import BALD, STRATEGIES

from .common import BatchSize, Epochs, LearningRate, MinSteps, WarmStartScaling, console, fail, progress_bar
from .corpus import CORPUS_HELP, labels_of, load_pool_and_test

app = typer.Typer()


@app.command()
def simulate(
    data: Path | None = typer.Option(None, help=CORPUS_HELP),
    test: Path | None = typer.Option(None, help="Test file; default: the folder's *testb/*test file, or a 20% hold-out"),
    strategies: str = typer.Option(
        "mnlp,random",
        help=f"Comma-separated arms: {', '.join(STRATEGIES)}, each with optional '+self_training' (pseudo-labels), "
        "'+diversity' (each batch spread over k-means clusters of sentence embeddings) and '+augment' (augmentations "
        "of the labelled texts mixed into each training): mnlp+diversity",
    ),
    seed_size: int = typer.Option(100, help="Cold-start labelled set, in --unit"),
    batch: int = typer.Option(100, help="Labelled per round, in --unit"),
    rounds: int = typer.Option(5, help="Query rounds after the seed set"),
    unit: str = typer.Option("sentences", help="Budget unit: sentences or tokens"),
    seeds: str = typer.Option("0", help="Comma-separated random seeds; curves are averaged over them"),
    pool_size: int = typer.Option(0, help="Sample this many pool sentences (0: all)"),
    test_size: int = typer.Option(0, help="Sample this many test sentences (0: all)"),
    sample_seed: int | None = typer.Option(
        None, help="Seed of the pool and test samples (default: the first of --seeds); runs of other seeds to be merged need the same"
    ),
    base_model: str | None = typer.Option(None, help="Hugging Face model directory or id; default: all-MiniLM-L6-v2 (offline)"),
    # TrainConfig's defaults, written out (see common.py); test_simulation checks they agree
    epochs: Epochs = 10,
    min_steps: MinSteps = 1000,
    learning_rate: LearningRate = 1e-4,
    batch_size: BatchSize = 16,
    warm_start_scaling: WarmStartScaling = 0.0,
    mc_samples: int = typer.Option(BALD.mc_samples, help="MC-dropout passes for BALD"),
    full_pool: bool = typer.Option(
        True, "--full-pool/--no-full-pool",
        help="Also train on the whole pool per seed (the 99% target's reference); skip it when another run measured it",
    ),
    dev_share: float = typer.Option(0.2, min=0.0, max=0.95, help="Hash-chosen dev share of the labelled set (the service's rule)"),
    self_training_threshold: float = typer.Option(0.99, help="+self_training arms: task confidence a pool text needs for a pseudo-label"),
    self_training_weight: float = typer.Option(0.5, help="+self_training arms: loss weight of a pseudo-labelled text"),
    augment_method: str = typer.Option("mention_replacement", help="+augment arms: the augmentation method"),
    augment_n: int = typer.Option(1, help="+augment arms: new examples per labelled training text and round, at most"),
    augment_ratio: float = typer.Option(0.5, help="+augment arms: augmented examples per real one in a training, at most"),
    out: Path = typer.Option(Path("runs/simulate"), help="Output folder for curve.json and curve.png (rewritten after each training)"),
):
    """Run the active-learning loop with gold labels standing in for annotators."""
    from active_learning.recipe import SelfTraining
    from active_learning.simulation import AugmentInLoop, SimulationConfig, write_results
    from active_learning.simulation import simulate as run_simulation
    from active_learning.training import TrainConfig

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
    try:
        config = SimulationConfig(
            strategies=[s.strip() for s in strategies.split(",") if s.strip()],
            seed_size=seed_size,
            batch=batch,
            rounds=rounds,
            unit=unit,
            seeds=seed_list,
            base_model=base_model,
            mc_samples=mc_samples,
            full_pool=full_pool,
            dev_share=dev_share,
            self_training=SelfTraining(enabled=True, threshold=self_training_threshold, weight=self_training_weight),
            augment=AugmentInLoop(augment_method, augment_n, augment_ratio),
            train=TrainConfig(
                epochs=epochs, min_steps=min_steps, learning_rate=learning_rate, batch_size=batch_size,
                warm_start_scaling=warm_start_scaling,
            ),
        )
    except ValueError as error:
        fail(str(error))
    if sample_seed is None:
        sample_seed = seed_list[0] if seed_list else 0
    pool, test_set = load_pool_and_test(data, test, pool_size, test_size, sample_seed)
    labels = labels_of(pool, test_set)
    console.print(
        f"pool [bold]{len(pool)}[/bold] sentences · test [bold]{len(test_set)}[/bold] · labels {', '.join(labels)} · "
        f"strategies {', '.join(config.strategies)}"
    )
    with progress_bar() as progress, interrupt_flag() as interrupted:
        trainings = len(seed_list) * (len(config.strategies) * (config.rounds + 1) + 1)
        overall = progress.add_task("simulation", total=trainings)
        steps = progress.add_task("training", total=1)

        def stop_if_interrupted() -> None:
            if interrupted.is_set():
                raise KeyboardInterrupt

        def on_stage(message: str) -> None:
            stop_if_interrupted()
            progress.reset(steps, total=1)
            progress.update(overall, description=message)

        def on_step(step: int, total: int, loss: float) -> None:
            stop_if_interrupted()
            progress.update(steps, total=total, completed=step, description=f"training · loss {loss:.3f}")

        def on_result(result) -> None:  # one per training
            progress.advance(overall)
            progress.console.print(
                f"  {result.strategy:>16} seed {result.seed} round {result.round}: {result.sentences} sentences, "
                f"{100 * result.tokens_fraction:.1f}% of pool tokens → F1 {result.f1:.3f}"
                + ("" if result.promoted else " (candidate not promoted)")
                + (f" · kappa {result.kappa:.4f}" if result.kappa is not None else "")
                + (" · [bold]stopping signal[/bold]" if result.stop_fired else "")
            )

        try:
            document = run_simulation(
                pool, test_set, labels, config, on_stage=on_stage, on_step=on_step, on_result=on_result,
                on_document=lambda partial: (write_results(partial, out), stop_if_interrupted()),
            )
        except KeyboardInterrupt:
            console.print(f"\n[bold]interrupted[/bold]: {out / 'curve.json'} holds the trainings that finished (\"complete\": false)")
            raise typer.Exit(130) from None
    curve, png = write_results(document, out)
    print_summary(document)
    console.print(f"\ncurve: [bold]{curve}[/bold]\nplot:  [bold]{png}[/bold]")


@contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt as usual and also sets the flag this yields, which the
    run's callbacks check: a KeyboardInterrupt raised while a finaliser or a weakref callback runs is
    printed as "Exception ignored" and swallowed by Python (seen in CI: the run went on to the end),
    and the next training step or stage raises it again."""
    interrupted = threading.Event()

    def on_sigint(_signum, _frame) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def print_summary(document: dict) -> None:
    table = Table(title="Learning curve: entity F1 on test (share of pool tokens labelled) by round")
    strategies = list(dict.fromkeys(r["strategy"] for r in document["rounds"]))
    table.add_column("round")
    for name in strategies:
        table.add_column(name)
    by_round: dict[int, dict[str, list]] = {}
    for r in document["rounds"]:
        by_round.setdefault(r["round"], {}).setdefault(r["strategy"], []).append(r)
    for number, row in sorted(by_round.items()):
        cells = []
        for name in strategies:
            runs = row.get(name, [])
            if runs:  # mean over seeds
                f1 = sum(r["f1"] for r in runs) / len(runs)
                share = sum(r["tokens_fraction"] for r in runs) / len(runs)
                cells.append(f"{f1:.3f} ({100 * share:.1f}%)")
            else:
                cells.append("")
        table.add_row(str(number), *cells)
    console.print(table)
    summary = Table(title="Summary")
    for column in ("strategy", "final F1", "full-pool F1", "tokens to 99% of full F1", "AULC vs random", "stopping signal at"):
        summary.add_column(column)
    for name, s in document["summary"].items():
        reached = s["tokens_fraction_to_99pct_full_f1"]
        summary.add_row(
            name,
            f"{s['final_f1']:.3f}",
            f"{s['full_pool_f1']:.3f}" if s["full_pool_f1"] is not None else "-",
            f"{100 * reached:.1f}%" if reached is not None else f"not within {100 * s['final_tokens_fraction']:.1f}%",
            f"{s['aulc_vs_random']:.3f}" if s["aulc_vs_random"] is not None else "-",
            f"{100 * s['stop_tokens_fraction']:.1f}% (F1 {s['stop_f1']:.3f})" if s["stop_tokens_fraction"] is not None else "did not fire",
        )
    console.print(summary)
