"""Demo: convert the packaged pretrained all-MiniLM-L6-v2 with each correction and compare over-smoothing.

Runs offline in well under a minute on 2 CPU cores: `hf-centered demo` or `python -m hf_centered.demo`.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as transformers_logging

from .corrections import available_corrections
from .data import minilm_dir, rotten_tomatoes
from .diagnostics import oversmoothing_profile
from .modeling_centered_bert import CenteredBertModel

HEADER = f"{'correction':<12}{'cos sim':>9}{'eff. rank':>11}{'residual':>10}{'emb. agreement':>16}"
LEGEND = (
    "cos sim: mean pairwise token cosine similarity (lower = less smoothed); residual: Dong et al.'s distance to "
    "rank one (higher = less collapsed); emb. agreement: cosine of the mean-pooled sentence embeddings with the "
    "stock model's (the corrections change a pretrained model until it is fine-tuned)."
)


def _mean_pooled(model, inputs) -> torch.Tensor:
    hidden = model(**inputs).last_hidden_state
    weights = inputs["attention_mask"][..., None].to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def compare_corrections(num_sentences: int = 64, batch_size: int = 16) -> list[dict[str, float | str]]:
    """Profiles MiniLM converted with every correction (default hyper-parameters) on `num_sentences` Rotten Tomatoes
    snippets: one row per method, with the last layer's metrics and the agreement of its mean-pooled sentence
    embeddings with the stock model's. `format_comparison` turns the rows into the demo's table."""
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = rotten_tomatoes()[0][:num_sentences]
    batches = [
        tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt")
        for i in range(0, len(texts), batch_size)
    ]
    rows, reference_embeddings = [], None
    for correction in available_corrections():
        model = CenteredBertModel.from_pretrained(path, correction=correction).eval()
        with torch.no_grad():
            embeddings = torch.cat([_mean_pooled(model, batch) for batch in batches])
        if reference_embeddings is None:
            reference_embeddings = embeddings
        profile = oversmoothing_profile(model, batches, progress=False)
        agreement = torch.nn.functional.cosine_similarity(embeddings, reference_embeddings).mean().item()
        rows.append(
            {
                "correction": correction,
                "cosine_similarity": profile["cosine_similarity"][-1],
                "effective_rank": profile["effective_rank"][-1],
                "rank_collapse_residual": profile["rank_collapse_residual"][-1],
                "embedding_agreement": agreement,
            }
        )
    return rows


def format_comparison(rows: list[dict[str, float | str]], num_sentences: int) -> str:
    """The demo's table of `compare_corrections` rows, with its title and legend."""
    lines = [
        f"all-MiniLM-L6-v2 (packaged) on {num_sentences} Rotten Tomatoes snippets; last layer, real tokens only",
        HEADER,
        "-" * len(HEADER),
    ]
    for row in rows:
        lines.append(
            f"{row['correction']:<12}{row['cosine_similarity']:>9.3f}{row['effective_rank']:>11.2f}"
            f"{row['rank_collapse_residual']:>10.3f}{row['embedding_agreement']:>16.3f}"
        )
    return "\n".join(lines) + "\n\n" + LEGEND


def main(num_sentences: int = 64) -> None:
    """`hf-centered demo` / `python -m hf_centered.demo`: the comparison, printed as a table."""
    # The conversion's load report is expected here, not news.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    num_sentences = min(num_sentences, len(rotten_tomatoes()[0]))
    print(format_comparison(compare_corrections(num_sentences=num_sentences), num_sentences))


if __name__ == "__main__":
    main()
