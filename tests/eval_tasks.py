"""Small in-memory MTEB tasks of every type the paper uses, registered on import (``moee eval --task-module``).

Nothing is downloaded: each task wraps the lists below. ``encoded_texts()`` lists exactly the texts MTEB
sends to the encoder for them (classification uses every train text: samples_per_label >= texts per label).
"""

from __future__ import annotations

from moee_plugins.evaluation import (
    classification_task,
    clustering_task,
    pair_classification_task,
    register_task,
    reranking_task,
    sts_task,
    summarization_task,
)

SPORT = ["The striker scored twice in the final.", "Our team won the hockey match last night.",
         "The marathon runners crossed the finish line.", "She served an ace to win the tennis set.",
         "The goalkeeper saved a penalty in extra time.", "Fans cheered as the relay team broke the record."]
FOOD = ["Simmer the tomato sauce for twenty minutes.", "Knead the bread dough until it is smooth.",
        "Add a pinch of salt to the boiling pasta water.", "The chef grilled the fish with lemon and herbs.",
        "Whisk the eggs and sugar into a light cream.", "Roast the vegetables with olive oil and garlic."]
TECH = ["The new laptop ships with a faster processor.", "Restart the router to fix the network connection.",
        "The compiler reports a type error on line ten.", "Install the driver before plugging in the printer.",
        "The database query returns rows in a random order.", "Update the firmware to patch the security bug."]

STS_PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing onions.", "Someone is cutting an onion.", 4.2),
    ("The cat sleeps on the sofa.", "A cat is sleeping on a couch.", 4.5),
    ("Two dogs run across the field.", "The dogs are running in a meadow.", 3.9),
    ("A child is riding a bicycle.", "The stock market fell sharply today.", 0.1),
    ("The train leaves at noon.", "A chef is cooking pasta.", 0.0),
    ("He is reading a newspaper.", "A man reads the paper.", 4.4),
    ("The sun is setting over the sea.", "Rain is falling on the city.", 1.0),
    ("A girl is painting a picture.", "A girl draws with a pencil.", 2.8),
    ("People are dancing at a party.", "A crowd dances at a celebration.", 4.1),
]
PAIRS = [
    ("How do I reset my password?", "What is the way to change my password?", 1),
    ("The meeting was moved to Friday.", "The meeting now takes place on Friday.", 1),
    ("She bought a new car.", "She purchased a new vehicle.", 1),
    ("The museum opens at nine.", "Bananas are rich in potassium.", 0),
    ("Turn left at the bridge.", "The recipe needs two cups of flour.", 0),
    ("He missed the bus this morning.", "The bus left without him today.", 1),
    ("The phone battery is empty.", "Our garden has many roses.", 0),
    ("It will snow tomorrow.", "The lecture covers linear algebra.", 0),
]
RERANK = [
    ("How do I install python packages?",
     ["Use pip to install python packages."],
     ["The river flooded the valley.", "Bake the cake for forty minutes.", "The orchestra played Mozart."]),
    ("Why does my ubuntu wifi disconnect?",
     ["Ubuntu drops the wireless connection after suspend."],
     ["Fresh basil smells wonderful.", "The election results were announced.", "Penguins live in Antarctica."]),
    ("What is the capital of France?",
     ["Paris is the capital city of France."],
     ["Use pip to install python packages.", "The striker scored twice in the final.", "Whales are mammals."]),
]
SUMMARIES = [
    ("The city council approved a new park in the north district after a long debate about costs.",
     ["The council approved a new park in the north.", "A new northern park was approved by the council."],
     ["The council approved a park.", "A debate happened.", "Bananas are yellow and sweet."],
     [4.5, 2.0, 1.0]),
    ("Researchers found that regular walking improves sleep quality in older adults.",
     ["Walking regularly helps older adults sleep better.", "Older people who walk often sleep better."],
     ["Walking improves sleep in older adults.", "Researchers found something.", "The train was late again."],
     [4.8, 2.2, 1.0]),
]


def build_tasks() -> list:
    """One task of each type (fresh instances)."""
    clf_train = SPORT[:4] + FOOD[:4] + TECH[:4]
    clf_test = SPORT[4:] + FOOD[4:] + TECH[4:]
    return [
        classification_task("TinyTopicClassification", clf_train, [0] * 4 + [1] * 4 + [2] * 4,
                            clf_test, [0] * 2 + [1] * 2 + [2] * 2, n_experiments=2, samples_per_label=8),
        clustering_task("TinyTopicClustering", SPORT + FOOD + TECH, [0] * 6 + [1] * 6 + [2] * 6),
        pair_classification_task("TinyParaphrasePairs", [a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS],
                                 [y for _, _, y in PAIRS]),
        reranking_task("TinyQuestionReranking", RERANK),
        sts_task("TinySTS", [a for a, _, _ in STS_PAIRS], [b for _, b, _ in STS_PAIRS],
                 [s for _, _, s in STS_PAIRS], min_score=0, max_score=5),
        summarization_task("TinySummarization", [t for t, _, _, _ in SUMMARIES], [h for _, h, _, _ in SUMMARIES],
                           [m for _, _, m, _ in SUMMARIES], [r for _, _, _, r in SUMMARIES], min_score=0, max_score=5),
    ]


TASK_NAMES = [task.metadata.name for task in build_tasks()]


def encoded_texts(names: list[str] | None = None) -> set[str]:
    """The texts MTEB encodes for the named tasks (all by default)."""
    names = TASK_NAMES if names is None else names
    by_task = {
        "TinyTopicClassification": SPORT + FOOD + TECH,
        "TinyTopicClustering": SPORT + FOOD + TECH,
        "TinyParaphrasePairs": [a for a, _, _ in PAIRS] + [b for _, b, _ in PAIRS],
        "TinyQuestionReranking": [q for q, _, _ in RERANK] + [d for _, p, n in RERANK for d in p + n],
        "TinySTS": [a for a, _, _ in STS_PAIRS] + [b for _, b, _ in STS_PAIRS],
        "TinySummarization": [s for _, h, m, _ in SUMMARIES for s in h + m],
    }
    return {text for name in names for text in by_task[name]}


def register_all() -> None:
    for task in build_tasks():
        register_task(task, overwrite=True)


register_all()
