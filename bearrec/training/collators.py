"""Training batches: examples (prompt + answer token ids) left-padded so that every answer ends at the last
position, the trie candidates and negatives an objective asks for, and packed rows for ``train.pack``."""

from __future__ import annotations

import torch

from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import IGNORE_INDEX, left_pad


class AlignmentDraw:
    """``train.alignment_ratio``: about ``ratio`` alignment examples (:mod:`bearrec.items.alignment`) per next-item
    example of a batch, drawn uniformly with replacement (the fraction by a coin), as ``align_ids`` /
    ``align_mask [M, L]`` and answer-aligned ``align_labels [M, A]``."""

    def __init__(self, examples: list[dict], ratio: float, pad_id: int):
        self.examples, self.ratio, self.pad_id = examples, ratio, pad_id

    def __call__(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        wanted = self.ratio * n
        count = int(wanted) + int(torch.rand((), generator=generator) < wanted - int(wanted))
        if count == 0:
            return {}
        drawn = [self.examples[i] for i in torch.randint(0, len(self.examples), (count,), generator=generator).tolist()]
        ids, mask = left_pad([e["prompt"] + e["answer"] for e in drawn], self.pad_id)
        return {"align_ids": ids, "align_mask": mask, "align_labels": answer_labels([e["answer"] for e in drawn])}


def answer_labels(answers: list[list[int]]) -> torch.Tensor:
    """``[R, A]``: each answer right-aligned (it ends the left-padded row), -100 before it."""
    longest = max(len(a) for a in answers)
    labels = torch.full((len(answers), longest), IGNORE_INDEX, dtype=torch.long)
    for row, answer in enumerate(answers):
        labels[row, longest - len(answer):] = torch.tensor(answer)
    return labels


class Collator:
    """Left-padded ``input_ids``/``attention_mask`` and answer-aligned ``labels [R, A]``, plus what the
    objective asks for:

    * ``with_prompts``: the prompts alone (``prompt_ids``/``prompt_mask``), for beam-sim's search;
    * ``negatives = K > 0``: K catalog items other than the target, drawn uniformly, answer the same
      prompt in the K rows after each example's own row (rows grouped ``1 + K`` per example, S-DPO);
    * ``trie``: ``candidates [R, A, C]``, the trie-valid next tokens of every answer position (-1
      padded), gathered from the trie on the CPU while the accelerator trains: no ``[R, A, V]`` mask;
    * ``prefix_negatives = K > 0`` (APAO pairwise): ``group_labels [N, 1 + K, A]``, each example's answer
      then K uniformly drawn other items' (left-aligned, -100 padded), and the prompts alone, so that one
      forward scores all of them after one copy of the prompt.

    * ``alignment``: alignment examples beside the batch (:class:`AlignmentDraw`).

    ``labels[:, j]`` is the token at position ``L - A + j``: the logits of the last ``A + 1`` positions,
    minus the final one, predict exactly these tokens.
    """

    def __init__(self, pad_id: int, with_prompts: bool = False, trie: ItemTrie | None = None, negatives: int = 0,
                 answers: list[list[int]] | None = None, seed: int = 0, prefix_negatives: int = 0,
                 alignment: AlignmentDraw | None = None):
        self.pad_id, self.with_prompts, self.trie, self.negatives, self.answers = pad_id, with_prompts, trie, negatives, answers
        self.prefix_negatives, self.alignment = prefix_negatives, alignment
        if (negatives or prefix_negatives) and not answers:
            raise ValueError("sampling negatives needs the catalog's answers")
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self, item: int, k: int) -> list[int]:
        """K catalog items drawn uniformly with replacement, never ``item``."""
        draw = torch.randint(0, len(self.answers) - 1, (k,), generator=self.generator)  # [K] uniform, target skipped
        return (draw + (draw >= item).long()).tolist()

    def _rows(self, examples: list[dict]) -> list[dict]:
        if not self.negatives:
            return examples
        rows = []
        for e in examples:
            rows += [e] + [{"prompt": e["prompt"], "answer": self.answers[i], "item": i} for i in self._draw(e["item"], self.negatives)]
        return rows

    def _group_labels(self, examples: list[dict]) -> torch.Tensor:
        """``[N, 1 + K, A]``: each example's answer, then K negatives' (left-aligned, -100 padded)."""
        groups = [[e["answer"]] + [self.answers[i] for i in self._draw(e["item"], self.prefix_negatives)] for e in examples]
        width = max(len(a) for g in groups for a in g)
        out = torch.full((len(groups), 1 + self.prefix_negatives, width), IGNORE_INDEX, dtype=torch.long)
        for n, group in enumerate(groups):
            for g, answer in enumerate(group):
                out[n, g, : len(answer)] = torch.tensor(answer)
        return out

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = self._rows(examples)
        input_ids, attention_mask = left_pad([e["prompt"] + e["answer"] for e in rows], self.pad_id)
        labels = answer_labels([e["answer"] for e in rows])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.alignment is not None:
            batch.update(self.alignment(len(examples), self.generator))
        if self.with_prompts or self.prefix_negatives:
            batch["prompt_ids"], batch["prompt_mask"] = left_pad([e["prompt"] for e in examples], self.pad_id)
        if self.prefix_negatives:
            batch["group_labels"] = self._group_labels(examples)
        if self.trie is not None:
            batch["candidates"] = self.trie.label_candidates(labels)  # [R, A, C]
        return batch


def pack_examples(examples: list[dict]) -> list[dict]:
    """Chains of examples whose token sequences continue each other, one training row each (``train.pack``).

    An example reads ``prompt + answer`` (answer = item tokens + EOS). When another example's prompt is exactly
    this prompt followed by this answer's item tokens (over semantic IDs: the same user one item later, since the
    prompt is the history's codes and nothing else), the longer sequence holds the shorter one as its prefix, and
    a causal model computes the shorter example's answer logits at the same positions, from the same context, in
    one forward over the longer. Chains are checked token by token, so packing never changes a logit; where no
    prompt continues another (a title prompt ends with its response header) every pack holds one example.

    Returns packs ``{"ids": the chain's longest sequence, "members": [(prompt length, answer)] of each example}``.
    """
    by_prompt: dict[tuple, list[int]] = {}
    for n, e in enumerate(examples):
        by_prompt.setdefault(tuple(e["prompt"]), []).append(n)
    for waiting in by_prompt.values():
        waiting.reverse()  # popped from the end: examples in their original order
    used = [False] * len(examples)
    packs = []
    for n in sorted(range(len(examples)), key=lambda n: len(examples[n]["prompt"])):  # chains start shortest first
        if used[n]:
            continue
        chain, used[n] = [n], True
        while True:
            e = examples[chain[-1]]
            waiting = by_prompt.get(tuple(e["prompt"] + e["answer"][:-1]), [])
            while waiting and used[waiting[-1]]:
                waiting.pop()
            if not waiting:
                break
            chain.append(waiting.pop())
            used[chain[-1]] = True
        last = examples[chain[-1]]
        packs.append({"ids": last["prompt"] + last["answer"],
                      "members": [(len(examples[c]["prompt"]), examples[c]["answer"]) for c in chain]})
    return packs


class PackedCollator:
    """Batches of packs (:func:`pack_examples`): left-padded ``input_ids``/``attention_mask`` of the packs, and per
    example, in the :class:`Collator`'s layout, ``labels [N, A]``, ``candidates [N, A, C]`` (with ``trie``),
    ``pack_index [N, A]``: where in the flattened ``[P * L]`` logits of the packs each label's logits are, and
    alignment examples (``alignment``)."""

    def __init__(self, pad_id: int, trie: ItemTrie | None = None, alignment: AlignmentDraw | None = None, seed: int = 0):
        self.pad_id, self.trie, self.alignment = pad_id, trie, alignment
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, packs: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = left_pad([p["ids"] for p in packs], self.pad_id)  # [P, L]
        width = input_ids.shape[1]
        members = [(row * width + width - len(p["ids"]) + start, answer)  # flat position of the prompt's end + 1
                   for row, p in enumerate(packs) for start, answer in p["members"]]
        longest = max(len(answer) for _, answer in members)
        labels = torch.full((len(members), longest), IGNORE_INDEX, dtype=torch.long)  # [N, A]
        index = torch.zeros((len(members), longest), dtype=torch.long)  # [N, A]
        for n, (end, answer) in enumerate(members):
            labels[n, longest - len(answer):] = torch.tensor(answer)
            index[n, longest - len(answer):] = torch.arange(end - 1, end - 1 + len(answer))  # position t predicts t + 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pack_index": index}
        if self.alignment is not None:
            batch.update(self.alignment(len(members), self.generator))
        if self.trie is not None:
            batch["candidates"] = self.trie.label_candidates(labels)  # [N, A, C]
        return batch
