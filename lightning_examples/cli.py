"""The examples' command line: Lightning's ``LightningCLI`` with one YAML file per example.

Every example runs ``python lightning_examples/NAME.py`` with the settings of
``configs/NAME.yaml``; any of them can be changed on the command line
(``--model.hidden 64``, ``--trainer.devices 2 --trainer.strategy ddp``) or by
another file (``--config my.yaml``).  ``--help`` lists them and
``--print_config`` prints the resolved configuration.

On top of Lightning's own options:

* ``--ckpt_path``: a checkpoint to resume from, or ``last`` for the last one of
  a previous run in the same ``trainer.default_root_dir``;
* ``--threads``: torch CPU threads per process.

The training length is ``model.adam_steps + model.second_order_steps``
(``trainer.max_steps`` follows from them).  Each run writes its CSV log,
checkpoints and figure under ``trainer.default_root_dir``, times itself with
Lightning's ``Timer``, and ends by printing its errors (``common.ErrorReport``).
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import torch
from common import ErrorReport
from figures import SolutionFigure
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint, Timer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger

CONFIGS = Path(__file__).resolve().parent / "configs"

# What every physics-informed run needs whatever the config says: validation and test take derivatives
# (no inference mode), the data module shards its own points, steps (not epochs) end training, float64.
TRAINER_DEFAULTS: dict[str, Any] = {
    "inference_mode": False,
    "use_distributed_sampler": False,
    "max_epochs": -1,
    "precision": "64-true",
    "log_every_n_steps": 1,
    "enable_model_summary": False,
}


class PINNCLI(LightningCLI):
    """``LightningCLI`` with the step link, ``--ckpt_path`` and ``--threads``, and the examples' callbacks.

    ``links`` are more ``(source, target)`` pairs of settings, the target following the source
    (e.g. ``("data.dim", "model.dim")``).
    """

    def __init__(self, *args: Any, links: tuple[tuple[str, str], ...] = (), **kwargs: Any) -> None:
        self.links = links
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from, or 'last'")
        parser.add_argument("--threads", type=int | None, default=None, help="torch CPU threads per process")
        parser.link_arguments(
            ("model.adam_steps", "model.second_order_steps"), "trainer.max_steps", compute_fn=operator.add
        )
        for source, target in self.links:
            parser.link_arguments(source, target)

    def before_instantiate_classes(self) -> None:
        if self.config.get("threads"):
            torch.set_num_threads(self.config["threads"])

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, logging to CSV and checkpointing under ``trainer.default_root_dir``."""
        root = Path(self.config_init["trainer"].get("default_root_dir") or ".")
        if self.config_init["trainer"].get("logger") in (None, True):
            kwargs["logger"] = CSVLogger(root, name="logs", flush_logs_every_n_steps=10)
        self.report, self.figure = ErrorReport(), SolutionFigure()
        configured = self.config_init["trainer"].get("callbacks") or []
        kwargs["callbacks"] = [*configured, self.report, self.figure]
        if self.config_init["trainer"].get("max_time") is None:
            # With trainer.max_time Lightning adds a Timer of its own (and ignores max_time if one is there).
            kwargs["callbacks"].append(Timer())
        # A fixed directory, so that a later run finds the last checkpoint with --ckpt_path last.
        kwargs["callbacks"].append(ModelCheckpoint(dirpath=root / "checkpoints", save_last=True))
        trainer = super().instantiate_trainer(**kwargs)
        return trainer


def run(
    model_class: type[LightningModule], data_class: type[LightningDataModule], config: str,
    argv: list[str] | None = None, links: tuple[tuple[str, str], ...] = (),
) -> dict:  # fmt: skip
    """Parse ``argv`` over ``configs/<config>``, train, test; return the report (errors, wall time, figure path)."""
    cli = PINNCLI(
        model_class,
        data_class,
        args=argv,
        run=False,
        links=links,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=None,
        auto_configure_optimizers=False,  # the modules bring their own (Adam, then a second-order method)
        parser_kwargs={"default_config_files": [str(CONFIGS / config)], "description": model_class.__doc__},
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config["ckpt_path"])
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return {**cli.report.result, "plot": cli.figure.path}
