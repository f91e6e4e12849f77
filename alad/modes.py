"""Phase-3 modes: the paper's AlAd variants and baselines. A new mode is one line in MODES.

    alad finetune --mode alad-joint ...

Learning rates: METHOD.md gives 1e-4 for frozen-M_C AlAd and 5e-5 for joint ("higher rates destroy
the alignment"). Full fine-tuning of a plain encoder uses 5e-5 (BERT paper range 2e-5..5e-5).
LoRA gets 1e-3 on its low-rank weights, as in peft's token-classification examples: at 5e-5 LoRA
barely moves and the comparison would be unfair to it; the adapter and head next to it keep
their own rate. AdaLoRA (`adalora`) is LoRA whose ranks are pruned by importance during training
(peft.AdaLoraConfig; budget in phase3.adalora): the same rate as LoRA. `kd` is M_C fine-tuned as
`compressed` is, with the task-distillation loss of alad/distill.py (phase3.distill); any other
mode takes phase3.distill too (e.g. alad-joint + KD). `slad` (alad/phases/slad.py) is LoRA on M_C
whose LoRA weights are slices of those of a pre-trained M_L + LoRA trained with it, on both task
losses + the distillation term: LoRA's rates. `probe` is M_L frozen + a linear head (the
probed teacher of SLAD's abstract, a distillation teacher): the head first fitted to convergence as
`alad probe` fits one (L-BFGS softmax regression on the training words), then trained at the
frozen modes' rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModeSpec:
    encoder: Literal["large", "compressed"]  # which model is fine-tuned / used at inference
    adapter: bool  # AlAd between the encoder and the head
    encoder_training: Literal["full", "frozen", "lora", "adalora"]
    lr: float  # adapter, head, and encoder when it trains fully
    lora_lr: float = 1e-3  # LoRA's and AdaLoRA's low-rank weights
    description: str = ""
    distills: bool = False  # needs phase3.distill (a teacher); other modes take it as an option
    # SLAD: M_L + LoRA + its own head trained with the student, the student's LoRA tied to it
    joint_teacher: bool = False
    # Relative cost of a sweep cell per training example vs compressed: medians of the measured
    # seconds in results/table1 (POS, NER; minilm-l3/-l6); kd's, adalora's, probe's and slad's
    # are estimates until measured: kd compressed + the teacher's one pass, adalora LoRA's,
    # probe one frozen forward pass of M_L (cached) + a head, slad compressed's (the student)
    # plus, added by the sweep, `large`'s cost of M_L (its forward + backward every step).
    # Orders cells, seeds the ETA.
    cost: float = 1.0
    marker: str = "x"  # matplotlib marker in reports/pareto.png
    # the head starts from a converged linear probe of the frozen encoder (alad.probe's
    # L-BFGS softmax regression on the training words; token tasks), then trains as any head
    fits_head: bool = False
    # the upper bound the report's "gap recovered" is measured against (M_L fine-tuned); `probe`
    # also runs M_L but is not it
    reference: bool = False

    @property
    def low_rank(self) -> bool:
        """LoRA or AdaLoRA on a frozen encoder (peft), merged into its weights on save."""
        return self.encoder_training in ("lora", "adalora")

    def model(self, compressed: str, large: str) -> str:
        """The encoder this mode fine-tunes and ships, of a (compressed, large) pair."""
        return large if self.encoder == "large" else compressed


# The registry: config choices, the CLI, the sweep, plots and the tests read the names from here.
MODES: dict[str, ModeSpec] = {
    "large": ModeSpec(
        "large",
        False,
        "full",
        5e-5,
        description="M_L fine-tuned (upper bound)",
        marker="*",
        reference=True,
    ),  # fmt: skip
    "compressed": ModeSpec(
        "compressed", False, "full", 5e-5, description="M_C fine-tuned", marker="o"
    ),
    "alad-frozen": ModeSpec(
        "compressed", True, "frozen", 1e-4, description="M_C frozen + AlAd", cost=0.4, marker="s"
    ),
    "alad-joint": ModeSpec(
        "compressed", True, "full", 5e-5, description="M_C + AlAd jointly", cost=1.3, marker="D"
    ),
    "lora": ModeSpec(
        "compressed", False, "lora", 1e-3, description="LoRA on frozen M_C", cost=0.4, marker="^"
    ),
    "lora-alad": ModeSpec(
        "compressed", True, "lora", 1e-4, description="LoRA on M_C + AlAd", cost=0.8, marker="v"
    ),
    "kd": ModeSpec(
        "compressed",
        False,
        "full",
        5e-5,
        description="M_C distilled from a fine-tuned teacher",
        cost=1.1,
        marker="P",
        distills=True,
    ),  # fmt: skip
    "adalora": ModeSpec(
        "compressed",
        False,
        "adalora",
        1e-3,
        description="AdaLoRA on frozen M_C",
        cost=0.5,
        marker="<",
    ),  # fmt: skip
    "slad": ModeSpec(
        "compressed",
        False,
        "lora",
        1e-3,
        description="LoRA on M_C tied to LoRA on M_L, trained jointly (SLAD)",
        cost=1.0,
        marker=">",
        joint_teacher=True,
    ),  # fmt: skip
    "probe": ModeSpec(
        "large",
        False,
        "frozen",
        1e-4,
        description="M_L frozen + a linear head, fitted as a linear probe",
        cost=0.3,
        fits_head=True,
        marker="h",
    ),  # fmt: skip
}
