"""The study's protocol as one object: how every run of a study is trained.

A :class:`Protocol` is built once from the composed config (:meth:`Protocol.from_config`: the
``train`` section of params/train/*.yaml with the study's overrides, its protocol switches, the
seeds and the model's input statistics) and handed to each run of a job (``vpeft.protocol``); or
from params/train/vtab.yaml alone (:meth:`Protocol.vtab`: the demo's pretraining, tests,
benchmarks). It makes what a run needs: the loop's settings for a grid point, the method attached
as the protocol attaches it, and the input normaliser. The switches themselves, and what each one
does, are :mod:`vpeft.train.published`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from vpeft.errors import UserError
from vpeft.train.published import protocol_name, redraw_added_linears, switches

if TYPE_CHECKING:  # torch only where a model is touched: select builds a Protocol without it
    import torch
    from torch import nn

    from vpeft.train.loop import Normaliser, TrainSettings


@dataclass(frozen=True)
class Protocol:
    """The ``train`` section with its switches checked (once, before anything trains)."""

    train: Mapping[str, Any]     # the composed train section (params/train/*.yaml + overrides)
    switches: Mapping[str, Any]  # train.protocol.* and train.cache_linear_features, checked
    name: str                    # "vpeft" | "as_published" | "custom" (in every metrics.json)
    seeds: tuple[int, ...]       # train.seeds: one final run each; the grid uses the first
    model: Mapping[str, Any] | None = None  # the model section: input mean, std and size

    @classmethod
    def from_config(cls, cfg: Any) -> Protocol:
        """A study's protocol, from its composed config."""
        from vpeft import layout

        return cls.from_train(cfg.train, seeds=layout.seeds(cfg), model=cfg.model)

    @classmethod
    def from_train(cls, train: Mapping[str, Any], *, seeds: Sequence[int],
                   model: Mapping[str, Any] | None = None) -> Protocol:
        return cls(train, switches(train), protocol_name(train), tuple(seeds), model)

    @classmethod
    def vtab(cls) -> Protocol:
        """params/train/vtab.yaml alone, at vpeft's defaults, whatever a study's train group and
        overrides say (the demo's backbone stands in for downloaded weights)."""
        from omegaconf import OmegaConf

        from vpeft.config import params_dir

        train = OmegaConf.to_container(OmegaConf.load(params_dir() / "train" / "vtab.yaml"))
        return cls.from_train(train, seeds=train["seeds"])

    def run_seed(self, where: str, phase: str, seed: int | None) -> int:
        """The seed a run of ``phase`` trains with (None: the first of train.seeds, the only
        one the grid is searched with)."""
        seed = self.seeds[0] if seed is None else int(seed)
        if phase == "grid" and seed != self.seeds[0]:
            raise UserError(f"{where}: the grid is searched once, with the first seed "
                            f"{self.seeds[0]} of train.seeds (got seed {seed})")
        if seed not in self.seeds:
            raise UserError(f"{where}: seed {seed} is not in train.seeds {list(self.seeds)}")
        return seed

    def device(self) -> torch.device:
        from vpeft.train.loop import resolve_device

        return resolve_device(self.train.get("device", "auto"))

    def settings(self, lr: float, weight_decay: float, **values: Any) -> TrainSettings:
        """The loop's settings of one run: the train section and its switches with a grid
        point's ``lr`` and ``weight_decay``, and ``values`` replacing some of them."""
        from vpeft.train.loop import TrainSettings

        names = {f.name for f in dataclasses.fields(TrainSettings)}
        given = {k: v for k, v in dict(self.train).items() if k in names}
        given.update({k: v for k, v in self.switches.items() if k in names})
        given["max_steps"] = self.rehearsal().get("max_steps")
        given.update(lr=float(lr), weight_decay=float(weight_decay), **values)
        return TrainSettings(**given)

    def rehearsal(self) -> dict[str, Any]:
        """``train.rehearsal`` with its values set (empty for a real run: every value null)."""
        values = self.train.get("rehearsal") or {}
        out = {}
        for key in ("max_steps", "max_eval_batches"):
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise UserError(f"train.rehearsal.{key}: {value}; expected a positive integer "
                                "or null (off)")
            if value is not None:
                out[key] = int(value)
        return out

    def method_hparams(self, method: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The hyper-parameters ``apply`` gets: the grid point's, plus VPT-shallow's prompt-drop
        flag when its switch is on (then also recorded in the adapter config, so reloads
        agree)."""
        out = dict(hparams)
        if method == "vpt_shallow" and self.switches["vpt_shallow_drop_prompts_after_block0"]:
            out["drop_prompts_after_block0"] = True
        return out

    def attach(self, model: nn.Module, method: str, hparams: Mapping[str, Any]) -> nn.Module:
        """Attach ``method`` with a grid point's ``hparams`` as this protocol does; as published,
        timm's ``init_weights`` then redraws the method's public-code Linears."""
        from vpeft.methods import apply

        apply(model, method, **self.method_hparams(method, hparams))
        if self.switches["redraw_added_linears"]:
            redraw_added_linears(model)
        return model

    def normaliser(self, model: nn.Module) -> Normaliser:
        """The uint8 -> model-input map: the backbone's mean/std, or none (pixels in [0, 1]) when
        ``train.protocol.normalize_inputs`` is false."""
        from vpeft.models.backbone import normalisation
        from vpeft.train.loop import Normaliser

        if self.model is None:
            raise ValueError("Protocol.normaliser: built without a model section")
        if self.switches["normalize_inputs"]:
            mean, std = normalisation(model, self.model["mean"], self.model["std"])
        else:
            import torch

            mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)  # as normalisation() shapes them
        return Normaliser(mean, std, int(self.model["img_size"]))
