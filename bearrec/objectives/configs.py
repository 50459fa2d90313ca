"""One config dataclass per objective, with the paper's / authors' defaults; ``loss`` applies it.

The trainer only knows the interface: ``loss(logits, labels, extra)`` returns ``(loss, regulariser_part)``,
where ``extra`` holds what the objective asked for in the batch:

* ``needs_search``: beam-search thresholds of eq. 3.1 simulated for the batch (``extra["thresholds"]``);
* ``needs_candidates``: the trie-valid next tokens of every answer position, sparse ``[N, T, C]``
  (``extra["candidates"]``, from :meth:`ItemTrie.label_candidates`);
* ``negatives > 0``: K sampled negative items per example, rows grouped ``1 + K`` per example, and the
  frozen reference model's sequence log-probabilities ``extra["reference"] [N, 1 + K]``.

``validate(section)`` raises ``ValueError("<section>.<field> must be ..., got ...")`` for bad values
(:func:`bearrec.checks.check`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bearrec.checks import check as _check
from bearrec.objectives.bear import FORMULATIONS, SURROGATES, bear_loss
from bearrec.objectives.sft import sft_loss

CANDIDATES = ("vocab", "trie")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bear_fields(cfg, section: str) -> None:
    """The fields BEAR-like sections share: beam_width, weight, temperature, and the optional ones."""
    _check(isinstance(cfg.beam_width, int) and not isinstance(cfg.beam_width, bool) and cfg.beam_width >= 1,
           section, "beam_width", "an integer >= 1", cfg.beam_width)
    _check(_number(cfg.weight) and cfg.weight >= 0, section, "weight", ">= 0", cfg.weight)
    _check(_number(cfg.temperature) and cfg.temperature > 0, section, "temperature", "> 0", cfg.temperature)
    if hasattr(cfg, "surrogate"):
        _check(cfg.surrogate in SURROGATES, section, "surrogate", " or ".join(SURROGATES), cfg.surrogate)
    if hasattr(cfg, "formulation"):
        _check(cfg.formulation in FORMULATIONS, section, "formulation", " or ".join(FORMULATIONS), cfg.formulation)
        _check(_number(cfg.tau) and cfg.tau > 0, section, "tau", "> 0", cfg.tau)
        _check(cfg.formulation == "official" or cfg.tau == 1, section, "tau", "1 with formulation paper", cfg.tau)
        _check(cfg.candidates in CANDIDATES, section, "candidates", " or ".join(CANDIDATES), cfg.candidates)


@dataclass
class SFTConfig:
    """Plain supervised fine-tuning (eq. 2.1): no hyperparameters."""

    needs_search = False
    needs_candidates = False
    negatives = 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = sft_loss(logits, labels)
        return loss, torch.zeros_like(loss)

    def validate(self, section: str) -> None:
        pass


@dataclass
class BEARConfig:
    """BEAR; see ``bear_loss``. Defaults are the authors' released script (Toy): tau 1, xi 2.75, lambda 0.25, B 10.

    ``official``: masked-softmax cross-entropy over the trie-valid tokens, reweighted by detached
    ``1 + lambda * sigmoid((log q(y) - log beta_B) / xi)`` (= SFT + lambda*xi*eq. 3.4 with beta detached,
    in gradient). ``paper``: eq. 3.4 as printed, full-vocabulary softmax, gradient through beta; its
    top-B candidates are the whole vocabulary or the trie-valid tokens (``candidates``).
    """

    beam_width: int = 10  # B: match the decoding beam width (paper: 10)
    weight: float = 0.25  # lambda (authors: 0.25; paper searches 0.1 - 5)
    temperature: float = 2.75  # xi, sigmoid temperature (authors: 2.75; paper searches 0.25 - 3)
    formulation: str = "official"  # official (released code) | paper (eq. 3.4 as printed)
    candidates: str = "vocab"  # paper formulation: top-B among the vocabulary | the trie-valid tokens
    tau: float = 1.0  # official formulation: softmax temperature of the masked softmax (authors: 1)
    surrogate: str = "paper"  # paper formulation: "paper" = eq. 3.4; "softplus" = only violated tokens pay
    needs_search = False

    @property
    def needs_candidates(self) -> bool:
        return self.formulation == "official" or self.candidates == "trie"

    negatives = 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        allowed = (extra or {}).get("candidates") if self.needs_candidates else None
        if self.needs_candidates and allowed is None:
            raise ValueError(f"bear ({self.formulation}) needs the batch's trie candidates")
        loss = bear_loss(logits, labels, self.beam_width, self.temperature, self.weight, self.formulation,
                         allowed=allowed, tau=self.tau, surrogate=self.surrogate)
        if self.formulation == "official":  # the part the weights add over plain MSL
            from bearrec.objectives.msl import msl_loss

            return loss, loss.detach() - msl_loss(logits.detach(), labels, allowed, self.tau)
        return loss, loss.detach() - sft_loss(logits.detach(), labels)

    def validate(self, section: str) -> None:
        _check_bear_fields(self, section)


@dataclass
class MSLConfig:
    """MSL (masked softmax loss, SIGIR 2025): cross-entropy over the trie-valid tokens of ``logits / tau``.

    ``tau``: 1 in the BEAR authors' MSL runs (``cmd/run.py``), 4.5 in the MSL README. ``ats``: the
    adaptive temperature of ``train_trie_token_adatau.py`` (see ``bearrec/objectives/msl.py``); ``tau``
    is then its starting value (MSL repo: 1.5), ``ats_eta`` 0.25, ``ats_alpha`` 0.05, clipped to
    [``ats_min``, ``ats_max``] = [1.5, 5], no warm-up. The running temperature lives in this object
    (a resumed run restarts it from ``tau``).
    """

    tau: float = 1.0
    ats: bool = False
    ats_eta: float = 0.25  # eta of C = log(|A_root| * eta)
    ats_alpha: float = 0.05  # smoothing of the running temperature
    ats_warmup: int = 0  # optimizer steps trained at the fixed ``tau`` before ATS starts
    ats_min: float = 1.5
    ats_max: float = 5.0
    needs_search = False
    needs_candidates = True
    negatives = 0

    def __post_init__(self):
        self.current_tau = self.tau

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        from bearrec.objectives.msl import ats_loss, ats_temperature, msl_loss

        extra = extra or {}
        allowed = extra.get("candidates")
        if allowed is None:
            raise ValueError("msl needs the batch's trie candidates")
        if not self.ats:
            loss = msl_loss(logits, labels, allowed, self.tau)
            return loss, torch.zeros_like(loss)
        if extra.get("step", 0) < self.ats_warmup:
            self.current_tau = self.tau
        elif logits.requires_grad:  # training steps move the running temperature, evaluation does not
            estimate = ats_temperature(logits.detach(), labels, allowed, self.ats_eta, (self.ats_min, self.ats_max))
            self.current_tau = (1 - self.ats_alpha) * self.current_tau + self.ats_alpha * estimate
        loss = ats_loss(logits, labels, allowed, self.current_tau)
        return loss, torch.zeros_like(loss)

    def validate(self, section: str) -> None:
        _check(_number(self.tau) and self.tau > 0, section, "tau", "> 0", self.tau)
        _check(isinstance(self.ats, bool), section, "ats", "true or false", self.ats)
        _check(_number(self.ats_eta) and self.ats_eta > 0, section, "ats_eta", "> 0", self.ats_eta)
        _check(_number(self.ats_alpha) and 0 < self.ats_alpha <= 1, section, "ats_alpha", "in (0, 1]", self.ats_alpha)
        _check(isinstance(self.ats_warmup, int) and self.ats_warmup >= 0, section, "ats_warmup", "an integer >= 0", self.ats_warmup)
        _check(_number(self.ats_min) and self.ats_min > 0, section, "ats_min", "> 0", self.ats_min)
        _check(_number(self.ats_max) and self.ats_max >= self.ats_min, section, "ats_max", ">= ats_min", self.ats_max)


@dataclass
class SDPOConfig:
    """S-DPO against a frozen reference (an SFT run); ``sdpo-bear`` adds BEAR (paper Figure 7).

    Defaults of the S-DPO repo: beta 1, 3 negatives (uniform over the catalog, never the target). The
    policy starts from the reference run's weights and tokenizer, as S-DPO fine-tunes its SFT model.
    ``weight`` .. ``tau``: the BEAR regulariser of ``sdpo-bear`` (ignored by ``sdpo``).
    """

    reference: str | None = None  # run folder of the reference SFT run (`bearrec train --objective sft`)
    negatives: int = 3  # K sampled negative items per example
    beta: float = 1.0
    weight: float = 0.25  # sdpo-bear: lambda
    temperature: float = 2.75  # sdpo-bear: xi
    beam_width: int = 10  # sdpo-bear: B
    formulation: str = "official"  # sdpo-bear: official (masked softmax, beta detached) | paper
    candidates: str = "vocab"  # sdpo-bear, paper formulation: vocab | trie
    tau: float = 1.0  # sdpo-bear, official formulation
    needs_search = False
    with_bear = False  # set for the sdpo-bear objective (see ``for_objective``)

    @property
    def needs_candidates(self) -> bool:
        return self.with_bear and (self.formulation == "official" or self.candidates == "trie")

    def for_objective(self, name: str) -> "SDPOConfig":
        """This section as the config of ``sdpo`` or ``sdpo-bear``."""
        config = SDPOConfig(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        config.with_bear = name == "sdpo-bear"
        return config

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        from bearrec.objectives.sdpo import sdpo_bear_loss

        extra = extra or {}
        if extra.get("reference") is None:
            raise ValueError("sdpo needs the reference model's sequence log-probabilities")
        return sdpo_bear_loss(logits, labels, extra["reference"], self.beta, self.weight if self.with_bear else 0.0,
                              self.beam_width, self.temperature, self.formulation,
                              extra.get("candidates") if self.needs_candidates else None, self.tau)

    def validate(self, section: str) -> None:
        _check(self.reference is None or isinstance(self.reference, str), section, "reference", "a run folder", self.reference)
        _check(isinstance(self.negatives, int) and not isinstance(self.negatives, bool) and self.negatives >= 1,
               section, "negatives", "an integer >= 1", self.negatives)
        _check(_number(self.beta) and self.beta > 0, section, "beta", "> 0", self.beta)
        _check_bear_fields(self, section)


@dataclass
class BeamSimConfig:
    """The straightforward objective (eq. 3.1): beam search simulated per instance (no gradient) gives
    the B-th prefix score of each step; the positive prefix is pushed above it with BEAR's surrogate.
    The paper measures it at 4.45x the cost of SFT; it is the accuracy reference for BEAR."""

    beam_width: int = 10
    weight: float = 1.0
    temperature: float = 1.0
    surrogate: str = "paper"
    needs_search = True
    needs_candidates = False
    negatives = 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        from bearrec.objectives.beam_sim import beam_sim_loss

        thresholds = (extra or {}).get("thresholds")
        if thresholds is None:
            raise ValueError("beam-sim needs the simulated thresholds of the batch")
        loss = beam_sim_loss(logits, labels, thresholds, self.temperature, self.weight, self.surrogate)
        return loss, loss - sft_loss(logits, labels).detach()

    def validate(self, section: str) -> None:
        _check_bear_fields(self, section)


@dataclass
class APAOConfig:
    """APAO (``bearrec/objectives/apao.py``): ``CE + beta * sum_t w_t L_t`` over the prefix lengths t of the positive.

    ``apao-pointwise``: ``L_t`` = mean of ``-s_t(y+) / t / temperature``; ``apao-pairwise``: the softmax of the
    positive's t-prefix against ``num_negatives`` uniformly sampled items' (resampled every batch, so every epoch),
    duplicates masked, rescaled by ``c_t`` (``rescale``). ``adaptive``: the detached worst-prefix weights
    ``w_t ∝ L_t exp(eta L_t)`` (the authors' code; uniform weights otherwise). Defaults: the authors' scripts
    (``train_apao_pointwise.sh`` / ``train_apao_pairwise.sh``): beta 0.1, prefix temperature 1, eta 0,
    100 negatives, rescaling on.
    """

    beta: float = 0.1  # weight of the prefix term (the paper searches 0.1 - 0.4)
    temperature: float = 1.0  # prefix_tau
    adaptive: bool = True  # worst-prefix weights (False: uniform over prefix lengths)
    eta: float = 0.0  # eta_adapt (the paper searches 0 - 5e-4)
    num_negatives: int = 100  # apao-pairwise: K uniform negatives per example (neg_k)
    rescale: bool = True  # apao-pairwise: c_t = (P_t - 1) / n_t (is_neg_scale)
    pairwise: bool = False  # set for the apao-pairwise objective (see ``for_objective``)
    needs_search = False
    needs_candidates = False
    negatives = 0  # no reference model (S-DPO's rows); the pairwise negatives travel as ``group_labels``

    def for_objective(self, name: str) -> "APAOConfig":
        """This section as the config of ``apao-pointwise`` or ``apao-pairwise``."""
        config = APAOConfig(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        config.pairwise = name == "apao-pairwise"
        return config

    @property
    def prefix_negatives(self) -> int:
        """Negatives whose prefix scores the batch must carry (``group_labels``), 0 for pointwise."""
        return self.num_negatives if self.pairwise else 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pointwise: ``logits [N, T, V]``, ``labels [N, T]``. Pairwise: rows grouped ``1 + K`` per example, the
        positive first (``[N(1+K), A, V]``), and ``extra["prefix_counts"]`` for the rescaling."""
        from bearrec.objectives.apao import adaptive_weights, apao_pairwise_loss, apao_pointwise_loss

        if self.pairwise:
            group = 1 + self.num_negatives
            grouped_logits = logits.view(-1, group, *logits.shape[1:])  # [N, 1+K, A, V]
            grouped_labels = labels.view(-1, group, labels.shape[-1])  # [N, 1+K, A]
            counts = (extra or {}).get("prefix_counts") if self.rescale else None
            if self.rescale and counts is None:
                raise ValueError("apao-pairwise with rescale needs the catalog's prefix counts")
            per_prefix = apao_pairwise_loss(grouped_logits, grouped_labels, counts, self.temperature, "per_prefix")
            ce = sft_loss(grouped_logits[:, 0], grouped_labels[:, 0])
        else:
            per_prefix = apao_pointwise_loss(logits, labels, self.temperature, "per_prefix")
            ce = sft_loss(logits, labels)
        weights = (adaptive_weights(per_prefix, self.eta) if self.adaptive
                   else torch.full_like(per_prefix, 1.0 / max(per_prefix.numel(), 1)))
        prefix = self.beta * (weights * per_prefix).sum()
        return ce + prefix, prefix.detach()

    def validate(self, section: str) -> None:
        _check(_number(self.beta) and self.beta >= 0, section, "beta", ">= 0", self.beta)
        _check(_number(self.temperature) and self.temperature > 0, section, "temperature", "> 0", self.temperature)
        _check(isinstance(self.adaptive, bool), section, "adaptive", "true or false", self.adaptive)
        _check(_number(self.eta) and self.eta >= 0, section, "eta", ">= 0", self.eta)
        _check(isinstance(self.num_negatives, int) and not isinstance(self.num_negatives, bool)
               and self.num_negatives >= 1, section, "num_negatives", "an integer >= 1", self.num_negatives)
        _check(isinstance(self.rescale, bool), section, "rescale", "true or false", self.rescale)


OBJECTIVE_CONFIGS = {"sft": SFTConfig, "bear": BEARConfig, "beam-sim": BeamSimConfig, "msl": MSLConfig,
                     "sdpo": SDPOConfig, "sdpo-bear": SDPOConfig, "apao-pointwise": APAOConfig,
                     "apao-pairwise": APAOConfig}
