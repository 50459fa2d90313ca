"""Alignment examples: teach a pretrained LM what its new code tokens mean in words (LC-Rec, MiniOneRec).

With ``train.alignment_ratio`` r > 0 (semantic IDs on a pretrained model, a catalog with titles), every training
batch of N next-item examples also carries about r·N examples drawn uniformly from these, half of each kind:

* title -> codes::

      ### Instruction:
      Write the semantic ID of the product with the title below.

      ### Title:
      Pilot G2 Gel Pens, Fine Point, Black, 12 Pack

      ### Semantic ID:
      (answer: <a_159><b_42><c_1><d_0> + EOS)

* codes -> title: the same with the two sections swapped (answer: the title + EOS).

They are trained with plain cross-entropy on their answer tokens, beside whatever objective the next-item examples
use, and never evaluated (validation and test are next-item examples only). Untitled items (``(untitled item
<id>)``) give none. A title is cut to :data:`MAX_TITLE_TOKENS` tokens, and written as the prompt shows it
(:func:`~bearrec.items.semantic_ids.title_text`: a code token spelled in it is text, not a code).
"""

from __future__ import annotations

from bearrec.data.dataset import RecDataset
from bearrec.items.prompts import PromptTemplate
from bearrec.items.semantic_ids import title_text

MAX_TITLE_TOKENS = 64


def alignment_examples(tokenizer, dataset: RecDataset, code_texts: list[str]) -> list[dict]:
    """``{"prompt": ids, "answer": ids}`` for every titled item, title -> codes then codes -> title; a one-line
    error when the catalog has no titles."""
    titled = dataset.titled_indices
    if not titled:
        raise ValueError("train.alignment_ratio: alignment examples pair codes with titles, and this catalog has "
                         "none (set train.alignment_ratio: 0)")
    singular = PromptTemplate(dataset.domain).singular
    eos = tokenizer.eos_token_id
    titles = tokenizer([title_text(dataset.titles[i]) for i in titled], add_special_tokens=False)["input_ids"]
    titles = [ids[:MAX_TITLE_TOKENS] for ids in titles]
    codes = tokenizer([code_texts[i] for i in titled], add_special_tokens=False)["input_ids"]

    def text(instruction: str, given: str) -> list[int]:
        return tokenizer(f"### Instruction:\n{instruction}\n\n### {given}:\n", add_special_tokens=False)["input_ids"]

    def heading(wanted: str) -> list[int]:
        return tokenizer(f"\n\n### {wanted}:\n", add_special_tokens=False)["input_ids"]

    to_codes = text(f"Write the semantic ID of the {singular} with the title below.", "Title")
    to_title = text(f"Write the title of the {singular} with the semantic ID below.", "Semantic ID")
    examples = [{"prompt": to_codes + t + heading("Semantic ID"), "answer": c + [eos]} for t, c in zip(titles, codes)]
    examples += [{"prompt": to_title + c + heading("Title"), "answer": t + [eos]} for t, c in zip(titles, codes)]
    return examples
