"""The training run configuration, :class:`TrainConfig`, with ``section.key=value`` overrides.

It is read from our YAML schema or from IGN's ``flair-1-config.yaml`` (see :mod:`flair_deploy.ign`),
detected automatically, by :func:`load_train_config`. :class:`EvaluateConfig` and
:func:`load_evaluate_config` do the same for ``flair-deploy evaluate``.

Sections (every key is documented in ``configs/README.md``)::

    data        CSV lists, 1-based bands, band names, classes, normalisation, aerial metadata, ignore index
    model       SMP architecture and encoder or a HuggingFace model, local encoder weights, metadata
                fusion, tile size, GSD
    optim       optimizer, learning rate, schedule, epochs, batch size
    loss        class weights by mask code, Dice weight
    trainer     Lightning passthrough: accelerator, devices, num_nodes, strategy, precision, limits
    checkpoint  monitor, mode, last/weights-only, early stopping, resume, weight initialisation
    logging     output folder, TensorBoard, CSV
    tasks       what the run does: train, then predict the test list, score it, keep the predictions
    seed, num_workers

Relative paths in a YAML file are relative to **that file's folder** (so a config and its CSVs travel
together); paths given on the command line are relative to the current directory. Validators raise
and never repair: a config that validates is what runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationError, model_validator

from flair_deploy.config import (
    DescribesWeights,
    FrozenConfig,
    Loaded,
    build_config,
    load_config,
    merge_dicts,
    read_yaml,
    validation_message,
)
from flair_deploy.config import (
    resolve_paths as resolve_config_paths,
)
from flair_deploy.description import (
    ArchitectureSpec,
    ClassInfo,
    ModelDescription,
    Normalization,
    NormalizationKind,
    Provenance,
    class_preset,
)
from flair_deploy.errors import ConfigError, ModelDescriptionError
from flair_deploy.flair_format import FLAIR_BANDS, flair_statistics
from flair_deploy.ign import convert_ign_train, is_ign_train_config, weights_config
from flair_deploy.inference.config import PatchSourcesConfig

__all__ = [
    "CheckpointSection",
    "ClassEntry",
    "DataSection",
    "EvaluateConfig",
    "LoggingSection",
    "LossSection",
    "ModelSection",
    "NormalizationSection",
    "OptimSection",
    "TasksSection",
    "TrainConfig",
    "TrainerSection",
    "load_evaluate_config",
    "load_train_config",
    "merge_dicts",
    "resolve_paths",
    "sample_config_base",
]

#: Dotted keys holding file paths (resolved against the YAML file's folder).
PATH_KEYS: tuple[str, ...] = (
    "data.train_csv",
    "data.val_csv",
    "data.test_csv",
    "data.aerial_json",
    "model.encoder_weights_path",
    "checkpoint.resume_from",
    "checkpoint.init_weights_from",
    "logging.out_dir",
    "tasks.checkpoint",
)

_GPU_ACCELERATORS = frozenset({"gpu", "cuda"})


class ClassEntry(FrozenConfig):
    """One row of a custom class table (the key in the table is the mask code).

    Attributes:
        name: Class name.
        color: ``#rrggbb`` colour for maps.
        active: False for a class kept as a logit but never trained (weight 0, masked at inference).
        aliases: Further mask codes folded into this class.
    """

    name: Annotated[str, Field(min_length=1)]
    color: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")] = "#808080"
    active: bool = True
    aliases: tuple[int, ...] = ()


class NormalizationSection(FrozenConfig):
    """How raw band values are normalised (inside the network).

    Attributes:
        kind: ``flair-rvbie`` (FLAIR #1's published mean/std, picked for the selected bands 1-5),
            ``meanstd`` (give ``mean`` and ``std``, one per selected band), ``scale`` (divide by
            ``max_value``; by default 255 for uint8 data, 65535 for uint16) or ``none``.
        mean: Per-band means for ``meanstd``.
        std: Per-band standard deviations for ``meanstd``.
        max_value: Divisor for ``scale``; default from ``data.input_dtype``.
    """

    kind: Literal["flair-rvbie", "meanstd", "scale", "none"] = "flair-rvbie"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    max_value: Annotated[float, Field(gt=0)] | None = None


class DataSection(FrozenConfig):
    """Training data.

    Attributes:
        train_csv: FLAIR CSV (image path, mask path; no header) of training patches (required when
            ``tasks.train``).
        val_csv: CSV of validation patches (held out; the best checkpoint is chosen on it; required
            when ``tasks.train``).
        test_csv: CSV of test patches: predicted (and scored) by ``tasks.predict``/``tasks.metrics``;
            otherwise only recorded for ``evaluate``.
        bands: 1-based band numbers read from every patch, in network order.
        band_names: Names of those bands; default R, G, B, NIR, E for FLAIR bands 1-5.
        input_dtype: Data type of the patches (decides ``scale`` normalisation's default divisor).
        classes: A preset name (``flair19``, ``flair15``, ``flair12``, ``flair13``) or a table keyed
            by mask code; logits follow ascending code order whatever the order in the file.
        normalization: Band normalisation.
        aerial_json: FLAIR aerial metadata JSON (needed when ``model.use_metadata``).
        ignore_index: When set (e.g. 255), pixels whose mask code is not in the class table (such as
            0 for unlabelled) get this target value and are ignored by the loss and the metrics; when
            unset such codes are an error naming the file. Must be >= the number of classes.
        augment: D4 augmentation (flips and 90° rotations) of training patches.
        radiometric_jitter: Strength of random per-band gain/offset on training patches (0 = off).
    """

    train_csv: Path | None = None
    val_csv: Path | None = None
    test_csv: Path | None = None
    bands: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = (1, 2, 3, 4, 5)
    band_names: tuple[str, ...] | None = None
    input_dtype: Literal["uint8", "uint16", "float32"] = "uint8"
    classes: str | dict[int, ClassEntry] = "flair15"
    normalization: NormalizationSection = NormalizationSection()
    aerial_json: Path | None = None
    ignore_index: Annotated[int, Field(ge=0, le=255)] | None = None
    augment: bool = True
    radiometric_jitter: Annotated[float, Field(ge=0, le=1)] = 0.0


class ModelSection(FrozenConfig):
    """Network architecture.

    Attributes:
        name: Model name recorded in the checkpoint (default ``<arch>-<encoder>``).
        provider: ``smp`` (``arch`` + ``encoder``) or ``huggingface`` (``hf_model``; IGN's
            ``model_provider: HuggingFace``).
        hf_model: HuggingFace ``org_model`` name built offline, e.g. ``nvidia/mit-b0``,
            ``openmmlab/upernet-convnext-tiny``, ``openmmlab/upernet-swin-tiny`` (see
            :data:`flair_deploy.hf_models.HF_MODELS`); its family and backbone replace arch/encoder.
        arch: SMP architecture (``unet``, ``unetplusplus``, ``fpn``, ``deeplabv3plus``, ...).
        encoder: SMP encoder (``resnet34``, ``resnet18``, ``efficientnet-b0``, ``tu-convnext_tiny``, ...).
        encoder_depth: Encoder stages (3-5); the tile size must be a multiple of ``2**depth``.
        encoder_weights_path: Local file of pretrained encoder weights (never downloaded).
        use_metadata: Fuse the aerial metadata vector (needs ``data.aerial_json``).
        tile_size: Tile edge for inference, recorded in the checkpoint (FLAIR patches: 512).
        overlap: Suggested overlap between inference tiles (default ``tile_size // 4``).
        gsd: Ground sampling distance of the data, metres per pixel.
    """

    name: str | None = None
    provider: Literal["smp", "huggingface"] = "smp"
    hf_model: str | None = None
    arch: str = "unet"
    encoder: str = "resnet34"
    encoder_depth: Annotated[int, Field(ge=3, le=5)] = 5
    encoder_weights_path: Path | None = None
    use_metadata: bool = False
    tile_size: Annotated[int, Field(gt=0)] = 512
    overlap: Annotated[int, Field(ge=0)] | None = None
    gsd: Annotated[float, Field(gt=0)] = 0.2

    @model_validator(mode="after")
    def _provider(self) -> Self:
        if self.provider == "smp":
            if self.hf_model is not None:
                raise ValueError(
                    f"model.hf_model {self.hf_model!r} needs model.provider=huggingface (it is 'smp')"
                )
            return self
        if self.hf_model is None:
            raise ValueError("model.provider=huggingface needs model.hf_model, e.g. nvidia/mit-b0")
        from flair_deploy.hf_models import hf_variant

        try:
            hf_variant(self.hf_model, source="model.hf_model")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        smp_only = sorted(
            {"arch", "encoder", "encoder_depth", "encoder_weights_path"} & self.model_fields_set
        )
        if smp_only:
            raise ValueError(
                f"model.{', model.'.join(smp_only)} are SMP settings; with model.provider=huggingface the "
                f"architecture comes from model.hf_model ({self.hf_model!r}): remove them"
            )
        return self

    def architecture(self) -> ArchitectureSpec:
        """Return the description's architecture for these settings.

        Raises:
            ConfigError: For an unknown ``hf_model`` (the message lists the known names).
        """
        if self.provider == "huggingface":
            from flair_deploy.hf_models import hf_architecture

            assert self.hf_model is not None  # the validator
            return hf_architecture(self.hf_model, source="model.hf_model")
        return ArchitectureSpec(arch=self.arch, encoder=self.encoder, encoder_depth=self.encoder_depth)


class OptimSection(FrozenConfig):
    """Optimisation.

    Attributes:
        optimizer: ``adamw`` or ``sgd`` (IGN uses plain SGD).
        lr: Learning rate (peak learning rate for ``onecycle``).
        weight_decay: Weight decay.
        momentum: SGD momentum (ignored by AdamW).
        scheduler: ``onecycle`` (per step), ``cosine`` (per epoch), ``plateau`` (on the checkpoint
            monitor) or ``none``.
        plateau_patience: Epochs without improvement before ``plateau`` lowers the rate.
        plateau_factor: Factor ``plateau`` multiplies the rate by.
        min_lr: Floor of the learning rate for ``plateau`` and ``cosine``.
        epochs: Maximum number of epochs.
        batch_size: Patches per batch (per device).
    """

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    scheduler: Literal["onecycle", "cosine", "plateau", "none"] = "onecycle"
    plateau_patience: Annotated[int, Field(ge=0)] = 10
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    min_lr: Annotated[float, Field(ge=0)] = 1e-7
    epochs: Annotated[int, Field(ge=1)] = 50
    batch_size: Annotated[int, Field(ge=1)] = 8


class LossSection(FrozenConfig):
    """Loss.

    Attributes:
        class_weights: Cross-entropy weight per mask code (unlisted codes weigh 1). A weight of 0 makes
            the class inactive: its pixels are ignored and its logit is never predicted.
        dice_weight: Weight of a soft Dice term added to cross-entropy (0 = cross-entropy only).
    """

    class_weights: dict[int, Annotated[float, Field(ge=0)]] | None = None
    dice_weight: Annotated[float, Field(ge=0)] = 0.0


class TrainerSection(FrozenConfig):
    """Lightning ``Trainer`` passthrough.

    Attributes:
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda``, ``mps``.
        devices: Number of devices, a list of device ids, or ``auto``.
        num_nodes: Number of machines (multi-node DDP).
        strategy: ``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``, ...
        precision: ``32-true``; ``16-mixed`` or ``bf16-mixed`` need ``accelerator: gpu``.
        limit_train_batches: Fraction (float) or number (int) of training batches per epoch.
        limit_val_batches: Fraction or number of validation batches per epoch.
        accumulate_grad_batches: Batches whose gradients are summed before a step.
        gradient_clip_val: Clip gradient norm to this value (None = off).
        deterministic: Ask torch for deterministic algorithms (slower).
        log_every_n_steps: Logging interval in training steps.
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: Annotated[int, Field(ge=1)] = 1
    strategy: str = "auto"
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    limit_train_batches: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)] = 1.0
    limit_val_batches: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)] = 1.0
    accumulate_grad_batches: Annotated[int, Field(ge=1)] = 1
    gradient_clip_val: Annotated[float, Field(gt=0)] | None = None
    deterministic: bool = False
    log_every_n_steps: Annotated[int, Field(ge=1)] = 10

    @model_validator(mode="after")
    def _mixed_precision_needs_gpu(self) -> Self:
        if self.precision != "32-true" and self.accelerator.lower() not in _GPU_ACCELERATORS:
            raise ValueError(
                f"precision {self.precision!r} needs a GPU but accelerator is {self.accelerator!r}; "
                "set trainer.accelerator=gpu, or trainer.precision=32-true on a CPU"
            )
        return self


class CheckpointSection(FrozenConfig):
    """Checkpointing and early stopping.

    Attributes:
        monitor: Logged metric that picks the best checkpoint (``val_miou``, ``val_loss``, ``val_oa``);
            also what ``plateau`` and early stopping watch.
        mode: ``max`` or ``min``; default ``min`` for a monitor containing ``loss``, else ``max``.
        save_last: Also keep ``last.ckpt`` (needed to resume).
        weights_only: Save weights and hyperparameters only (smaller; cannot resume the optimizer).
        early_stopping_patience: Stop after this many epochs without improvement (None = off).
        resume_from: Checkpoint to resume from (weights, optimizer, scheduler, epoch).
        init_weights_from: Checkpoint to initialise the network from before training (ours, or IGN
            weights matching this config's bands, classes and architecture): fine-tuning.
    """

    monitor: str = "val_miou"
    mode: Literal["min", "max"] | None = None
    save_last: bool = True
    weights_only: bool = False
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = None
    resume_from: Path | None = None
    init_weights_from: Path | None = None

    @property
    def resolved_mode(self) -> Literal["min", "max"]:
        """The mode, with the default decided from the monitor's name."""
        if self.mode is not None:
            return self.mode
        return "min" if "loss" in self.monitor else "max"

    @model_validator(mode="after")
    def _one_start(self) -> Self:
        if self.resume_from is not None and self.init_weights_from is not None:
            raise ValueError(
                "checkpoint.resume_from and checkpoint.init_weights_from are exclusive; resume continues "
                "a run, init_weights_from starts a new one from given weights"
            )
        return self


class LoggingSection(FrozenConfig):
    """Outputs and logs.

    Attributes:
        out_dir: Run folder: ``checkpoints/``, ``logs/``, ``train-config.yaml``, ``learning-curve.png``.
        tensorboard: Write TensorBoard logs.
        csv: Write CSV logs (needed for the learning-curve plot).
    """

    out_dir: Path = Path("runs/train")
    tensorboard: bool = True
    csv: bool = True


class TasksSection(FrozenConfig):
    """What one ``flair-deploy train`` run does, in order (IGN's ``tasks`` block).

    Training writes the run folder (see :mod:`flair_deploy.training.run`); then, with ``predict``, the
    patches of ``data.test_csv`` are predicted with the best checkpoint (or ``checkpoint`` without
    training) into ``<out_dir>/predictions_<out_dir name>/PRED_<image stem>.tif`` (IGN's names and
    values: uint8 0-based class indices); with ``metrics`` they are scored into ``<out_dir>/metrics/``
    (IGN's ``confmat.npy`` and ``metrics.json``) and ``<out_dir>/evaluation/`` (ours, as
    ``flair-deploy evaluate``). See :mod:`flair_deploy.training.pipeline`.

    Attributes:
        train: Train (False: only predict, from ``checkpoint``).
        predict: Predict every patch of ``data.test_csv`` after training.
        metrics: Score the predictions against the test masks (needs ``predict``).
        delete_preds: Do not keep the predictions once scored (needs ``metrics``); only the metrics
            remain, as IGN's ``delete_preds``.
        georeferenced: Predictions carry the test patch's CRS and transform (IGN's
            ``georeferencing_output``); False writes plain TIFFs.
        checkpoint: Checkpoint to predict with when ``train`` is false (ours, or IGN weights matching
            this config's bands, classes and architecture); after training the best checkpoint is used.
    """

    train: bool = True
    predict: bool = False
    metrics: bool = False
    delete_preds: bool = False
    georeferenced: bool = True
    checkpoint: Path | None = None

    @model_validator(mode="after")
    def _in_order(self) -> Self:
        if not (self.train or self.predict):
            raise ValueError("tasks.train and tasks.predict are both false: nothing to do; set one to true")
        if self.metrics and not self.predict:
            raise ValueError("tasks.metrics scores the predictions: it needs tasks.predict=true")
        if self.delete_preds and not self.metrics:
            raise ValueError(
                "tasks.delete_preds drops the predictions once scored: it needs tasks.metrics=true "
                "(without metrics the predictions are the only output)"
            )
        if self.train and self.checkpoint is not None:
            raise ValueError(
                "tasks.checkpoint is the model to predict with when tasks.train is false; after training "
                "the run's best checkpoint is used (to start training from weights use "
                "checkpoint.init_weights_from)"
            )
        if self.predict and not self.train and self.checkpoint is None:
            raise ValueError(
                "tasks.predict without tasks.train needs tasks.checkpoint (IGN: paths.ckpt_model_path), "
                "the model to predict with"
            )
        return self


class TrainConfig(FrozenConfig):
    """Everything a training run needs; :meth:`description` builds the model's self-description.

    Attributes:
        data: Training data.
        model: Network architecture.
        optim: Optimisation.
        loss: Loss.
        trainer: Lightning ``Trainer`` passthrough.
        checkpoint: Checkpointing and early stopping.
        logging: Outputs and logs.
        tasks: What the run does: train, predict the test list, score it.
        seed: Seed for torch, numpy, Python and DataLoader workers.
        num_workers: DataLoader worker processes (0 = load in the main process).
    """

    data: DataSection
    model: ModelSection = ModelSection()
    optim: OptimSection = OptimSection()
    loss: LossSection = LossSection()
    trainer: TrainerSection = TrainerSection()
    checkpoint: CheckpointSection = CheckpointSection()
    logging: LoggingSection = LoggingSection()
    tasks: TasksSection = TasksSection()
    seed: int = 2022
    num_workers: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        n = len(self.data.bands)
        if len(set(self.data.bands)) != n:
            raise ValueError(f"data.bands has repeated band numbers: {list(self.data.bands)}")
        if self.data.band_names is not None and len(self.data.band_names) != n:
            raise ValueError(
                f"data.band_names has {len(self.data.band_names)} names for {n} bands "
                f"{list(self.data.bands)}; give one name per band"
            )
        self._check_normalization()
        self._check_classes()
        self._check_tasks()
        if self.model.use_metadata and self.data.aerial_json is None:
            raise ValueError(
                "model.use_metadata is true but data.aerial_json is not set; give the FLAIR aerial "
                "metadata JSON, or set model.use_metadata=false"
            )
        n_classes = len(self.class_codes())
        if self.data.ignore_index is not None and self.data.ignore_index < n_classes:
            raise ValueError(
                f"data.ignore_index {self.data.ignore_index} would be read as logit {self.data.ignore_index} "
                f"of {n_classes}; use a value >= {n_classes}, e.g. 255"
            )
        return self

    def _check_tasks(self) -> None:
        tasks, data = self.tasks, self.data
        if tasks.train:
            missing = [k for k in ("train_csv", "val_csv") if getattr(data, k) is None]
            if missing:
                raise ValueError(
                    f"training needs data.{' and data.'.join(missing)}; give the patch lists, or set "
                    "tasks.train=false to only predict"
                )
        elif self.checkpoint.resume_from is not None or self.checkpoint.init_weights_from is not None:
            raise ValueError(
                "checkpoint.resume_from/init_weights_from start a training, but tasks.train is false; "
                "predict from a checkpoint with tasks.checkpoint"
            )
        if tasks.predict and data.test_csv is None:
            raise ValueError("tasks.predict needs data.test_csv, the patches to predict")

    def _check_normalization(self) -> None:
        norm, bands = self.data.normalization, self.data.bands
        if norm.kind == "meanstd":
            if norm.mean is None or norm.std is None:
                raise ValueError("data.normalization.kind=meanstd needs both mean and std")
            for key, values in (("mean", norm.mean), ("std", norm.std)):
                if len(values) != len(bands):
                    raise ValueError(
                        f"data.normalization.{key} has {len(values)} values for {len(bands)} bands "
                        f"{list(bands)}; give one per selected band"
                    )
            if any(s <= 0 for s in norm.std):
                raise ValueError(f"data.normalization.std must be > 0, got {list(norm.std)}")
        elif norm.mean is not None or norm.std is not None:
            raise ValueError(
                f"data.normalization.mean/std are only used with kind=meanstd, not {norm.kind!r}; "
                "remove them or set kind=meanstd"
            )
        if norm.kind == "flair-rvbie" and max(bands) > len(FLAIR_BANDS):
            raise ValueError(
                f"data.normalization.kind=flair-rvbie covers FLAIR bands 1-5, but bands are {list(bands)}; "
                "use kind=meanstd with your own statistics"
            )
        if norm.kind == "scale" and norm.max_value is None and self.data.input_dtype == "float32":
            raise ValueError("data.normalization.kind=scale on float32 data needs max_value")

    def _check_classes(self) -> None:
        classes = self.data.classes
        if isinstance(classes, str):
            try:
                class_preset(classes)
            except ModelDescriptionError as exc:
                raise ValueError(f"data.classes: {exc}") from None
        elif len(classes) < 2:
            raise ValueError(f"data.classes needs at least 2 classes, got {len(classes)}")
        weights = self.loss.class_weights or {}
        unknown = sorted(set(weights) - set(self.class_codes()))
        if unknown:
            raise ValueError(
                f"loss.class_weights has codes {unknown} that are not in data.classes "
                f"{self.class_codes()}; weights are keyed by mask code"
            )

    # ------------------------------------------------------------------ derived values
    def class_table(self) -> tuple[ClassInfo, ...]:
        """Return the classes in logit order, with ``active`` folded with the loss weights.

        A class is active when its table entry says so **and** its loss weight (if given) is > 0.
        Custom tables are sorted by mask code, so the file's key order never matters.
        """
        classes = self.data.classes
        if isinstance(classes, str):
            table = class_preset(classes)
        else:
            table = tuple(
                ClassInfo(code=code, name=e.name, color=e.color, active=e.active, aliases=e.aliases)
                for code, e in sorted(classes.items())
            )
        weights = self.loss.class_weights or {}
        return tuple(
            c.model_copy(update={"active": c.active and weights.get(c.code, 1.0) > 0}) for c in table
        )

    def class_codes(self) -> list[int]:
        """Mask codes of the classes, in logit order."""
        classes = self.data.classes
        if isinstance(classes, str):
            return [c.code for c in class_preset(classes)]
        return sorted(classes)

    def logit_weights(self) -> list[float]:
        """Return the cross-entropy weight of each logit (0 for inactive classes)."""
        weights = self.loss.class_weights or {}
        return [float(weights.get(c.code, 1.0)) if c.active else 0.0 for c in self.class_table()]

    def band_names(self) -> tuple[str, ...]:
        """Names of the selected bands (FLAIR names for bands 1-5 unless given)."""
        if self.data.band_names is not None:
            return self.data.band_names
        return tuple(FLAIR_BANDS[b - 1] if b <= len(FLAIR_BANDS) else f"B{b}" for b in self.data.bands)

    def normalization(self) -> Normalization:
        """Return the description's normalisation for the selected bands."""
        norm = self.data.normalization
        if norm.kind == "flair-rvbie":
            mean, std = flair_statistics(self.data.bands)
            return Normalization(kind=NormalizationKind.MEANSTD, mean=mean, std=std)
        if norm.kind == "meanstd":
            assert norm.mean is not None and norm.std is not None  # checked by the validator
            return Normalization(kind=NormalizationKind.MEANSTD, mean=norm.mean, std=norm.std)
        if norm.kind == "scale":
            default = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}[self.data.input_dtype]
            return Normalization(kind=NormalizationKind.SCALE, max_value=norm.max_value or default)
        return Normalization(kind=NormalizationKind.NONE)

    def description(self) -> ModelDescription:
        """Build the :class:`ModelDescription` the checkpoint will carry.

        Raises:
            ConfigError: If the combination is not a valid description (e.g. a tile size that is not a
                multiple of the encoder's output stride).
        """
        m = self.model
        metadata = None
        if m.use_metadata:
            from flair_deploy.aerial import aerial_spec

            metadata = aerial_spec()
        overlap = m.overlap if m.overlap is not None else m.tile_size // 4
        arch = m.architecture()
        try:
            return ModelDescription(
                name=m.name or f"{arch.arch}-{arch.encoder}",
                bands=self.band_names(),
                normalization=self.normalization(),
                input_dtype=self.data.input_dtype,
                classes=self.class_table(),
                tile_size=m.tile_size,
                overlap=overlap,
                gsd=m.gsd,
                architecture=arch,
                metadata=metadata,
                provenance=Provenance(source="flair-deploy train"),
            )
        except ValidationError as exc:
            raise ConfigError(
                validation_message(exc, source="model description from the train config")
            ) from None


def sample_config_base() -> dict[str, Any]:
    """Return the settings tuned for the generated sample dataset (``configs/train-sample.yaml``).

    Everything but the data paths: a U-Net/ResNet-18 on 64-px patches, AdamW with a one-cycle schedule,
    19 logits of which the 9 classes the sample draws are active. On 160 training patches it reaches a
    validation mIoU above 0.9 in a few CPU minutes (see docs/training.md).
    """
    drawn = {1, 2, 3, 4, 5, 6, 7, 10, 11}  # flair_deploy.sample.SAMPLE_CLASS_CODES
    return {
        "data": {
            "bands": [1, 2, 3, 4, 5],
            "classes": "flair19",
            "normalization": {"kind": "flair-rvbie"},
            "augment": True,
        },
        "model": {"arch": "unet", "encoder": "resnet18", "tile_size": 64, "gsd": 0.2},
        "optim": {
            "optimizer": "adamw",
            "lr": 0.003,
            "weight_decay": 0.0001,
            "scheduler": "onecycle",
            "epochs": 12,
            "batch_size": 16,
        },
        "loss": {"class_weights": {c: 0 for c in range(1, 20) if c not in drawn}, "dice_weight": 0.0},
        "trainer": {"accelerator": "auto", "precision": "32-true"},
        "checkpoint": {"monitor": "val_miou", "save_last": True},
        "seed": 2022,
        "num_workers": 0,
    }


def resolve_paths(data: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Return *data* with the relative paths of :data:`PATH_KEYS` made relative to *folder*."""
    return resolve_config_paths(data, folder, PATH_KEYS)


def load_train_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Loaded[TrainConfig]:
    """Read a training config (ours or IGN's ``flair-1-config.yaml``, detected automatically).

    Precedence: *flags* (explicit command-line options) > *overrides* (``--set section.key=value``) >
    the YAML file > *base* > defaults. Overrides and flags always use our schema's keys, also for IGN
    files.

    Args:
        path: YAML file, or None to build from *base*, *overrides* and *flags* only.
        overrides: ``section.key=value`` strings; values are parsed as YAML.
        flags: Dotted key → value (e.g. ``{"data.train_csv": ...}``); None values are not given.
        base: Nested values the YAML file is applied on top of (e.g. :func:`sample_config_base`).
        flag_names: Dotted key → the option that sets it, so errors name ``--epochs``.

    Returns:
        The validated config, and notes on IGN keys that were not applied (empty for our schema).

    Raises:
        ConfigError: For unreadable YAML, unknown keys or invalid values (one line naming the key).
    """
    data: dict[str, Any] = merge_dicts(base or {}, {})
    notes: tuple[str, ...] = ()
    origins: dict[str, str] = {}
    source = "train config"
    if path is not None:
        source = str(path)
        raw = read_yaml(path)
        if is_ign_train_config(raw):
            mapping = convert_ign_train(raw, source=source)
            raw, notes, origins = mapping.values, mapping.notes, mapping.origins
        data = merge_dicts(data, resolve_paths(raw, path.resolve().parent))
    cfg = build_config(
        TrainConfig, data, overrides, flags, source=source, flag_names=flag_names, origins=origins
    )
    return Loaded(cfg, notes)


class EvaluateConfig(DescribesWeights):
    """Everything ``flair-deploy evaluate`` needs.

    Attributes:
        checkpoint: A flair-deploy checkpoint, or IGN weights with ``preset``.
        csv: FLAIR patch list (``image,mask`` rows, no header; paths relative to the CSV).
        out_dir: Output folder for ``metrics.json``, the confusion matrix and predictions.
        preset, ign_config: What describes weights that carry none (see
            :class:`~flair_deploy.config.DescribesWeights`).
        bands: 1-based raster bands in the model's band order; None reads bands ``1..C``.
        aerial_json: FLAIR aerial metadata JSON, required for models that fuse metadata.
        batch_size: Patches per forward pass.
        num_workers: Data-loading worker processes (0: the main process).
        device: Torch device (``cpu``, ``cuda``); None uses CUDA when available.
        predictions: Also write ``predictions/PRED_<name>.tif`` for every patch.
        ignore_unknown: Skip mask codes outside the class table instead of failing.
        overwrite: Replace existing outputs.
        sources: BD ORTHO patches: the list's images are RVB rasters, completed with IRC and elevation
            rasters (``--irc``, ``--elevation``) into VRTs of R, G, B, NIR (, E).
    """

    checkpoint: Path
    csv: Path
    out_dir: Path
    bands: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] | None = None
    aerial_json: Path | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    num_workers: Annotated[int, Field(ge=0)] = 0
    device: str | None = None
    predictions: bool = False
    ignore_unknown: bool = False
    overwrite: bool = False
    sources: PatchSourcesConfig | None = None


def load_evaluate_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
) -> Loaded[EvaluateConfig]:
    """Build an :class:`EvaluateConfig`: *flags* > *overrides* > the YAML at *path* > defaults.

    Relative paths in the YAML file are relative to its folder.

    Raises:
        ConfigError: For unreadable YAML, unknown keys or invalid values (one line naming the key).
    """
    ign = weights_config(path, command="evaluate", bands_key="bands")
    if ign is not None:
        return Loaded(
            load_config(EvaluateConfig, None, overrides, flags, base=ign.values, flag_names=flag_names),
            ign.notes,
        )
    keys = ("checkpoint", "csv", "out_dir", "aerial_json", "sources.irc", "sources.elevation")
    cfg = load_config(EvaluateConfig, path, overrides, flags, flag_names=flag_names, path_keys=keys)
    return Loaded(cfg)
