"""What a teacher hands the cache: a sample with its sparse targets, and what kind they are."""

from __future__ import annotations

from dataclasses import dataclass, field

from distillq.core.job.data import Prompt, Sample
from distillq.core.targets.records import Alignment, SparseTargets

Kind = str
"""What a sample's targets are: "scored" (the teacher's distribution over given text),
"generated" (its distribution over its own response) or "generated_text" (its text only: the
source gave no log-probs; the student learns the text with CE)."""
KINDS: tuple[Kind, ...] = ("scored", "generated", "generated_text")


@dataclass
class Target:
    """One sample as the teacher made it, ready for the cache."""

    sample: Sample
    targets: SparseTargets | None
    kind: Kind = "scored"
    text: str = ""
    """The response the teacher wrote ("" when it scored given text)."""
    alignment: Alignment = field(default_factory=Alignment)


def generated_sample(prompt: Prompt, new_ids: list[int], stopped: bool, eos: int | None) -> Sample:
    """The prompt + the teacher's response as a training sample: the response is the target,
    ending in EOS when the teacher stopped by itself."""
    ids = list(prompt.input_ids) + list(new_ids)
    if stopped and eos is not None and ids[-1:] != [eos]:
        ids.append(eos)
    mask = [False] * len(prompt.input_ids) + [True] * (len(ids) - len(prompt.input_ids))
    return Sample(prompt.record_id, ids, mask)
