"""The embedded demo dataset: a seeded, generated pool with a reference set and eval tasks.

The "target" domain is a bestiary of made-up creatures. A knowledge base (KB) gives every creature six
attributes (fur color, habitat, diet, size, sound, number of legs); target documents state a few facts about
one creature in templated phrasings. Every KB fact is stated in several pool documents, so a small LM that
trains on target documents learns them. The reference set, the held-out reference set and the eval tasks ask
about *disjoint* sets of facts (no shared items); none of their items is a pool document.

The rest of the pool is off-domain text (recipes, weather reports, sports reports, software release notes),
junk (character soup, web boilerplate, repeated tokens) and clusters of near-duplicates: a base document plus
copies with one or two word substitutions. Most clusters copy a target document, which is where group-level
selection should beat individual selection: the first copy of a useful document helps, the rest add little.

All randomness comes from `numpy.random.Generator`s seeded from (seed, stream); the pool, the KB and each
split use separate streams, so e.g. changing `n_eval` does not change the pool.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .progress import atomic_write_text
from .sources import Document

DEMO_VERSION = "1"  # bump when generated content changes for the same parameters

# Independent random streams, so that one part's size never shifts another part's draws.
_KB, _POOL, _SPLIT, _REFERENCE, _HELDOUT, _TASKS, _HELDOUT_TEXT = range(7)

# Eval task name -> item schema (docs/contracts.md); written to tasks/<name>.jsonl.
TASK_TYPES = {"kb_multiple_choice": "multiple_choice", "kb_schema": "schema",
              "kb_language_modeling": "language_modeling"}


@dataclass(frozen=True)
class DemoCorpusParams:
    n_docs: int = 3000
    n_shards: int = 2
    frac_target: float = 0.35
    frac_offdomain: float = 0.35
    frac_junk: float = 0.10
    frac_near_dup: float = 0.20
    near_dup_min_size: int = 3
    near_dup_max_size: int = 8
    near_dup_target_share: float = 0.75  # share of near-duplicate clusters that copy a target document
    n_entities: int = 48
    n_reference: int = 48
    n_heldout_reference: int = 48
    n_eval: int = 48  # items per eval task
    n_heldout_text: int = 100
    seed: int = 0

    @classmethod
    def tests_profile(cls, seed: int = 0) -> DemoCorpusParams:
        return cls(n_docs=500, n_shards=2, n_entities=24, n_reference=32, n_heldout_reference=32, n_eval=16,
                   n_heldout_text=40, seed=seed)

    def as_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        fractions = (self.frac_target, self.frac_offdomain, self.frac_junk, self.frac_near_dup)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"demo fractions must be >= 0 and sum to 1, got {fractions}")
        if self.n_shards < 1 or self.n_docs < self.n_shards:
            raise ValueError(f"need n_shards >= 1 and n_docs >= n_shards, got {self.n_docs}, {self.n_shards}")
        if not 2 <= self.near_dup_min_size <= self.near_dup_max_size:
            raise ValueError("need 2 <= near_dup_min_size <= near_dup_max_size")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        n_facts = self.n_entities * len(ATTRIBUTES)
        needed = self.n_reference + self.n_heldout_reference + len(TASK_TYPES) * self.n_eval
        if needed > n_facts:
            raise ValueError(f"reference + held-out + eval items need {needed} distinct facts, the KB has "
                             f"{n_facts} ({self.n_entities} entities x {len(ATTRIBUTES)}); raise n_entities")
        # Each entity's first three documents state >= 2 facts each from one cycle of its 6 attributes.
        n_target = _kind_counts(self)["target"]
        if n_target < 3 * self.n_entities:
            raise ValueError(f"{n_target} target documents cannot state all {n_facts} KB facts (need "
                             f"{3 * self.n_entities}); raise n_docs or frac_target, or lower n_entities")


# ------------------------------------------------------------------------------------------ the KB


@dataclass(frozen=True)
class Attribute:
    name: str
    values: tuple[str, ...]
    statements: tuple[tuple[str, str], ...]  # (prefix with {e}, suffix with {v}); the answer is the suffix
    question: str


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("color", ("red", "blue", "green", "yellow", "purple", "orange", "silver", "black", "white", "brown"),
              (("The fur of the {e} is", " {v}."), ("The {e} has", " {v} fur."),
               ("Most people recognize the {e} by its", " {v} fur.")),
              "What color is the fur of the {e}?"),
    Attribute("habitat", ("Amber Marsh", "Crystal Caves", "Dusk Forest", "Frost Peaks", "Glass Desert",
                          "Iron Hills", "Misty Lagoon", "Salt Plains", "Thorn Jungle", "Willow Delta"),
              (("The {e} lives in the", " {v}."), ("The home of the {e} is the", " {v}."),
               ("You can find the {e} in the", " {v}.")),
              "Where does the {e} live?"),
    Attribute("diet", ("moss", "beetles", "river fish", "wild berries", "tree bark", "mushrooms", "seaweed",
                       "honey", "small lizards", "fallen fruit"),
              (("The {e} feeds on", " {v}."), ("The favorite food of the {e} is", " {v}."),
               ("The {e} mostly eats", " {v}.")),
              "What does the {e} eat?"),
    Attribute("size", ("tiny", "small", "medium-sized", "large", "huge", "giant"),
              (("The {e} is a", " {v} animal."), ("In size, the {e} is", " {v}."),
               ("Compared to other creatures, the {e} is", " {v}.")),
              "How big is the {e}?"),
    Attribute("sound", ("humming", "clicking", "whistling", "growling", "chirping", "hissing", "booming",
                        "rattling"),
              (("The {e} makes a", " {v} sound."), ("The call of the {e} is a", " {v} noise."),
               ("When it is alarmed, the {e} makes a", " {v} sound.")),
              "What sound does the {e} make?"),
    Attribute("legs", ("two", "four", "six", "eight", "ten", "twelve"),
              (("The {e} walks on", " {v} legs."), ("Each {e} stands on", " {v} legs."),
               ("Every adult {e} has", " {v} legs.")),
              "How many legs does the {e} have?"),
)

_TARGET_INTROS = ("This is a note about the {e}.", "Field guide entry: the {e}.",
                  "The {e} is a creature from the old tales.", "Here is what we know about the {e}.",
                  "Many travelers ask about the {e}.")
_TARGET_FILLERS = ("Travelers rarely see it up close.", "Little else is known about its habits.",
                   "Scholars have studied it for many years.", "It is often mentioned in old stories.",
                   "People in nearby villages know it well.", "It is mostly active in the early morning.")

# Word swaps that make near-duplicates without touching any fact.
_SYNONYMS = {"often": "frequently", "rarely": "seldom", "mostly": "mainly", "old": "ancient", "many": "several",
             "Travelers": "Visitors", "Scholars": "Researchers", "note": "short entry", "known": "understood",
             "studied": "observed", "People": "Folks", "expect": "anticipate", "great": "real",
             "available": "out", "Please": "Kindly", "advised": "told", "Many": "Some", "team": "squad",
             "cooks": "chefs", "improves": "speeds up", "fixes": "repairs", "Let": "Allow"}
_TAGS = ("Shared from the archive.", "Reposted.", "Source: community wiki.", "Updated recently.")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "kr", "sk", "tr",
           "th", "sh", "dr", "pl", "gr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee", "oo")
_CODAS = ("n", "r", "l", "x", "k", "m", "sh", "th", "b", "g", "t")


def _template_words() -> set[str]:
    texts = [t for a in ATTRIBUTES for s in a.statements for t in s] + [a.question for a in ATTRIBUTES]
    texts += list(_TARGET_INTROS) + list(_TARGET_FILLERS)
    return {w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)}


def _entity_names(rng: np.random.Generator, n: int) -> list[str]:
    taken, names = _template_words() | {w.lower() for w in _SYNONYMS}, []
    while len(names) < n:
        name = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(2)) + _CODAS[rng.integers(len(_CODAS))]
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


@dataclass(frozen=True)
class KnowledgeBase:
    entities: tuple[str, ...]
    values: tuple[tuple[int, ...], ...]  # values[entity][attribute] = index into ATTRIBUTES[attribute].values

    def value(self, entity: int, attribute: int) -> str:
        return ATTRIBUTES[attribute].values[self.values[entity][attribute]]

    def as_json(self) -> dict:
        return {e: {a.name: self.value(i, j) for j, a in enumerate(ATTRIBUTES)} for i, e in enumerate(self.entities)}


def _rng(params: DemoCorpusParams, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([params.seed, stream]))


@lru_cache(maxsize=8)
def build_kb(params: DemoCorpusParams) -> KnowledgeBase:
    rng = _rng(params, _KB)
    names = _entity_names(rng, params.n_entities)
    values = tuple(tuple(int(rng.integers(len(a.values))) for a in ATTRIBUTES) for _ in names)
    return KnowledgeBase(tuple(names), values)


def _statement(kb: KnowledgeBase, entity: int, attribute: int, template: int) -> tuple[str, str]:
    prefix, suffix = ATTRIBUTES[attribute].statements[template]
    return prefix.format(e=kb.entities[entity]), suffix.format(v=kb.value(entity, attribute))


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


# ------------------------------------------------------------------------------------ pool documents


def _target_doc(rng: np.random.Generator, kb: KnowledgeBase, entity: int, attributes: list[int]) -> str:
    name = kb.entities[entity]
    sentences = [_TARGET_INTROS[rng.integers(len(_TARGET_INTROS))].format(e=name)]
    for attribute in attributes:
        prefix, suffix = _statement(kb, entity, attribute, int(rng.integers(3)))
        sentences.append(_capitalize(prefix + suffix))
    for filler in rng.choice(len(_TARGET_FILLERS), size=int(rng.integers(0, 3)), replace=False):
        sentences.insert(int(rng.integers(1, len(sentences) + 1)), _TARGET_FILLERS[filler])
    return " ".join(sentences)


_OFFDOMAIN: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    # domain: (headers, body sentences, slot values)
    "recipes": (
        ("To make {dish}, mix {n} cups of {ing} with {ing2}.", "Here is a simple recipe for {dish}."),
        ("Bake the mixture at {temp} degrees for {m} minutes.", "Let it cool before serving with {side}.",
         "This recipe is often made for {occasion}.", "Many cooks add a pinch of {spice} for extra flavor.",
         "Store leftovers in the fridge for up to {d} days.", "Stir the {ing} slowly so it does not burn."),
        {"dish": ("banana bread", "lentil soup", "apple pie", "corn muffins", "vegetable stew", "rice pudding"),
         "ing": ("flour", "oats", "rice", "milk", "sugar", "butter"), "ing2": ("eggs", "water", "yogurt", "cream"),
         "side": ("fresh bread", "a green salad", "whipped cream", "roasted potatoes"),
         "occasion": ("holidays", "birthdays", "family dinners", "picnics"),
         "spice": ("salt", "cinnamon", "pepper", "nutmeg"), "n": ("two", "three", "four"),
         "temp": ("160", "180", "200", "220"), "m": ("20", "30", "45", "60"), "d": ("two", "three", "five")}),
    "weather": (
        ("Weather report for {city} on {day}.", "Here is the forecast for {city} this {day}."),
        ("Expect {cond} skies with a high of {t} degrees.",
         "Winds will blow from the {dir} at {s} kilometers per hour.",
         "The chance of rain is {p} percent.", "Forecasters expect {cond2} conditions to continue through the weekend.",
         "Residents are advised to {advice}.", "Temperatures will drop to {t2} degrees overnight."),
        {"city": ("Portville", "Lakeside", "Northbridge", "Eastmoor", "Hillcrest", "Riverton"),
         "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
         "cond": ("clear", "cloudy", "gray", "sunny", "stormy"), "cond2": ("dry", "windy", "humid", "cold", "mild"),
         "dir": ("north", "south", "east", "west"), "t": ("12", "18", "21", "25", "30"), "t2": ("2", "5", "8", "11"),
         "s": ("10", "15", "25", "40"), "p": ("10", "30", "50", "80"),
         "advice": ("carry an umbrella", "stay indoors", "drink plenty of water", "drive carefully")}),
    "sports": (
        ("{team} beat {team2} {a} to {b} on {day}.", "Match report: {team} against {team2}."),
        ("{player} scored {n} points in the second half.", "The coach said the team played with great energy.",
         "Fans filled the stadium in {city} despite the {cond} weather.", "The next match is scheduled for {day}.",
         "{team2} will try to recover before the playoffs.", "The referee showed {n} yellow cards."),
        {"team": ("the Falcons", "the Rovers", "the Tigers", "the Comets"),
         "team2": ("the Mariners", "the Wolves", "the Giants", "the Hawks"),
         "player": ("Sam Ortiz", "Lee Park", "Ana Silva", "Tom Berg", "Maya Chen"),
         "a": ("2", "3", "4", "5"), "b": ("0", "1", "2"), "n": ("two", "three", "four", "five"),
         "day": ("Monday", "Friday", "Saturday", "Sunday"), "city": ("Portville", "Lakeside", "Riverton"),
         "cond": ("rainy", "cold", "windy")}),
    "software": (
        ("Version {maj}.{mnr} of {app} is now available.", "Release notes for {app} {maj}.{mnr}."),
        ("This release fixes {n} bugs in the {component}.", "Users can now export reports as {fmt} files.",
         "The update often improves startup time by {p} percent.", "Please restart the application after installing.",
         "Support for {old} has been removed.", "The {component} now loads {p} percent faster."),
        {"app": ("TaskPad", "DataDock", "PhotoLoom", "MailBridge"), "maj": ("1", "2", "3", "4"),
         "mnr": ("0", "1", "2", "5", "9"), "n": ("three", "seven", "twelve", "twenty"),
         "component": ("editor", "sync engine", "search index", "settings page"),
         "fmt": ("PDF", "CSV", "JSON", "HTML"), "p": ("10", "20", "35", "50"),
         "old": ("legacy plugins", "the old file format", "older operating systems")}),
}

_BOILERPLATE = ("Home | About Us | Contact | Blog | Careers", "We use cookies to improve your experience.",
                "By continuing you agree to our Privacy Policy.", "Subscribe to our newsletter!",
                "Copyright 2023 All rights reserved.", "Click here to learn more.",
                "Terms of Service | Privacy | Sitemap", "Log in | Sign up | Forgot password?",
                "Share on social media.", "Page 1 of 12 | Next | Previous")
_SPAM_WORDS = ("buy", "click", "free", "win", "now", "lol", "best", "deal", "cheap", "wow")
_SOUP_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#$%&*+-=@~^"


def _fill(rng: np.random.Generator, template: str, slots: dict[str, tuple[str, ...]]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: slots[m.group(1)][rng.integers(len(slots[m.group(1)]))], template)


def _offdomain_doc(rng: np.random.Generator, domain: str) -> str:
    headers, body, slots = _OFFDOMAIN[domain]
    picks = rng.choice(len(body), size=int(rng.integers(3, 6)), replace=False)
    sentences = [_capitalize(_fill(rng, headers[rng.integers(len(headers))], slots))]
    sentences += [_capitalize(_fill(rng, body[i], slots)) for i in picks]
    return " ".join(sentences)


def _junk_doc(rng: np.random.Generator, kind: str) -> str:
    if kind == "soup":
        return " ".join("".join(rng.choice(list(_SOUP_CHARS), size=int(rng.integers(1, 9))))
                        for _ in range(int(rng.integers(30, 80))))
    if kind == "boilerplate":
        picks = rng.choice(len(_BOILERPLATE), size=int(rng.integers(3, 7)), replace=False)
        return " ".join(_BOILERPLATE[i] for i in picks)
    words = rng.choice(len(_SPAM_WORDS), size=int(rng.integers(1, 3)), replace=False)
    return " ".join(_SPAM_WORDS[words[i % len(words)]] for i in range(int(rng.integers(20, 80))))


def _near_copy(rng: np.random.Generator, base: str) -> str:
    """A copy of `base` with one or two synonym swaps (never a KB value) and maybe a trailing tag."""
    words = base.split(" ")
    swappable = [i for i, w in enumerate(words) if w.rstrip(".,!?") in _SYNONYMS]
    n_swaps = min(len(swappable), int(rng.integers(1, 3)))
    for i in rng.choice(swappable, size=n_swaps, replace=False) if n_swaps else ():
        word = words[i].rstrip(".,!?")
        words[i] = _SYNONYMS[word] + words[i][len(word):]
    copy = " ".join(words)
    if copy == base or rng.random() < 0.3:
        copy += " " + _TAGS[rng.integers(len(_TAGS))]
    return copy


def _kind_counts(params: DemoCorpusParams) -> dict[str, int]:
    counts = {"offdomain": round(params.n_docs * params.frac_offdomain),
              "junk": round(params.n_docs * params.frac_junk),
              "near_duplicate": round(params.n_docs * params.frac_near_dup)}
    counts["target"] = params.n_docs - sum(counts.values())
    return counts


def _meta(kind: str, domain: str, cluster: int = -1, entity: str = "", facts: tuple[str, ...] = ()) -> dict:
    return {"kind": kind, "domain": domain, "cluster": cluster, "entity": entity, "facts": list(facts)}


class _TargetWriter:
    """Target documents that cycle through entities and, per entity, through its attributes, so every KB
    fact is stated (validate() checks there are enough target documents for that)."""

    def __init__(self, rng: np.random.Generator, kb: KnowledgeBase):
        self.rng, self.kb, self.count = rng, kb, 0
        self.entity_order = rng.permutation(len(kb.entities))
        self.queues = [list(rng.permutation(len(ATTRIBUTES))) for _ in kb.entities]

    def next(self) -> tuple[str, dict]:
        entity = int(self.entity_order[self.count % len(self.entity_order)])
        self.count += 1
        queue = self.queues[entity]
        attributes = []
        for _ in range(int(self.rng.integers(2, 5))):
            if not queue:
                queue.extend(self.rng.permutation(len(ATTRIBUTES)))
            if queue[0] in attributes:
                break
            attributes.append(int(queue.pop(0)))
        text = _target_doc(self.rng, self.kb, entity, attributes)
        facts = tuple(ATTRIBUTES[a].name for a in attributes)
        return text, _meta("target", "bestiary", entity=self.kb.entities[entity], facts=facts)


@lru_cache(maxsize=8)
def _generate_pool(params: DemoCorpusParams) -> tuple[tuple[str, str], ...]:
    """The whole pool in final order as (text, meta JSON) pairs."""
    params.validate()
    rng, kb = _rng(params, _POOL), build_kb(params)
    counts = _kind_counts(params)
    writer = _TargetWriter(rng, kb)
    docs = [writer.next() for _ in range(counts["target"])]  # first, so every fact gets stated
    domains = sorted(_OFFDOMAIN)
    for i in range(counts["offdomain"]):
        domain = domains[i % len(domains)]
        docs.append((_offdomain_doc(rng, domain), _meta("offdomain", domain)))
    for i in range(counts["junk"]):
        kind = ("soup", "boilerplate", "repeat")[i % 3]
        docs.append((_junk_doc(rng, kind), _meta("junk", f"junk-{kind}")))
    docs.extend(_near_duplicate_docs(rng, params, writer, counts["near_duplicate"]))
    order = rng.permutation(len(docs))
    return tuple((docs[i][0], json.dumps(docs[i][1])) for i in order)


def _near_duplicate_docs(rng: np.random.Generator, params: DemoCorpusParams, writer: _TargetWriter,
                         total: int) -> list[tuple[str, dict]]:
    docs: list[tuple[str, dict]] = []
    cluster = 0
    domains = sorted(_OFFDOMAIN)
    while len(docs) < total:
        size = int(rng.integers(params.near_dup_min_size, params.near_dup_max_size + 1))
        size = min(size, total - len(docs))
        if rng.random() < params.near_dup_target_share:
            base, meta = writer.next()
        else:
            domain = domains[rng.integers(len(domains))]
            base, meta = _offdomain_doc(rng, domain), _meta("offdomain", domain)
        meta = dict(meta, kind="near_duplicate", cluster=cluster)
        docs.append((base, meta))
        docs.extend((_near_copy(rng, base), meta) for _ in range(size - 1))
        cluster += 1
    return docs


def demo_shard_source(shard_index: int) -> str:
    return f"demo/shard-{shard_index:03d}.jsonl"


def generate_demo_shard(params: DemoCorpusParams, shard_index: int) -> list[Document]:
    """Documents of one demo shard (contiguous slice of the pool), ids `demo/shard-000.jsonl:<row>`."""
    if not 0 <= shard_index < params.n_shards:
        raise ValueError(f"shard_index {shard_index} out of range for {params.n_shards} shards")
    pool = _generate_pool(params)
    start = shard_index * len(pool) // params.n_shards
    stop = (shard_index + 1) * len(pool) // params.n_shards
    source = demo_shard_source(shard_index)
    return [Document(f"{source}:{row}", text, source, row, json.loads(meta))
            for row, (text, meta) in enumerate(pool[start:stop])]


# ------------------------------------------------------------------------- reference set and eval tasks


def _fact_splits(params: DemoCorpusParams) -> dict[str, list[tuple[int, int]]]:
    """Disjoint (entity, attribute) facts for each split, drawn without replacement from the whole KB."""
    params.validate()
    facts = [(e, a) for e in range(params.n_entities) for a in range(len(ATTRIBUTES))]
    order = _rng(params, _SPLIT).permutation(len(facts))
    sizes = {"reference": params.n_reference, "heldout": params.n_heldout_reference}
    sizes.update({name: params.n_eval for name in TASK_TYPES})
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = [facts[i] for i in order[start:start + size]]
        start += size
    return splits


def generate_reference(params: DemoCorpusParams, split: str = "reference") -> list[dict]:
    """Prompt/answer pairs about KB facts: the prompt is a statement prefix, the answer its completion."""
    if split not in ("reference", "heldout"):
        raise ValueError(f"split must be 'reference' or 'heldout', got {split!r}")
    kb = build_kb(params)
    rng = _rng(params, _REFERENCE if split == "reference" else _HELDOUT)
    items = []
    for entity, attribute in _fact_splits(params)[split]:
        prompt, answer = _statement(kb, entity, attribute, int(rng.integers(3)))
        items.append({"prompt": prompt, "answer": answer})
    return items


def _multiple_choice(rng, kb, entity, attribute) -> dict:
    values = ATTRIBUTES[attribute].values
    gold_value = kb.values[entity][attribute]
    others = [i for i in range(len(values)) if i != gold_value]
    options = [gold_value] + [int(i) for i in rng.choice(others, size=3, replace=False)]
    order = rng.permutation(len(options))
    query = "Question: " + ATTRIBUTES[attribute].question.format(e=kb.entities[entity]) + "\nAnswer:"
    return {"query": query, "choices": [" " + values[options[i]] for i in order],
            "gold": int(np.flatnonzero(order == 0)[0])}


def _schema(rng, kb, entity, attribute) -> dict:
    template = int(rng.integers(3))
    rivals = [e for e in range(len(kb.entities)) if kb.values[e][attribute] != kb.values[entity][attribute]]
    rival = int(rivals[rng.integers(len(rivals))])
    prefix, suffix = _statement(kb, entity, attribute, template)
    rival_prefix, _ = _statement(kb, rival, attribute, template)
    gold = int(rng.integers(2))
    options = [rival_prefix, prefix] if gold else [prefix, rival_prefix]
    return {"context_options": options, "continuation": suffix, "gold": gold}


def _language_modeling(rng, kb, entity, attribute) -> dict:
    prefix, suffix = _statement(kb, entity, attribute, int(rng.integers(3)))
    return {"context": prefix, "continuation": suffix}


def generate_eval_tasks(params: DemoCorpusParams) -> dict[str, list[dict]]:
    """{task name: items}: multiple choice, schema and language modeling, each on its own KB facts."""
    kb, rng, splits = build_kb(params), _rng(params, _TASKS), _fact_splits(params)
    makers = {"kb_multiple_choice": _multiple_choice, "kb_schema": _schema,
              "kb_language_modeling": _language_modeling}
    return {name: [makers[name](rng, kb, e, a) for e, a in splits[name]] for name in TASK_TYPES}


def generate_heldout_text(params: DemoCorpusParams) -> list[dict]:
    """Fresh target-domain documents (never pool documents) for held-out perplexity."""
    kb, rng = build_kb(params), _rng(params, _HELDOUT_TEXT)
    pool_texts = {text for text, _ in _generate_pool(params)}
    writer = _TargetWriter(rng, kb)
    items = []
    while len(items) < params.n_heldout_text:
        text, meta = writer.next()
        if text not in pool_texts:
            items.append({"text": text, "entity": meta["entity"]})
    return items


# ------------------------------------------------------------------------------------------- files


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_demo_files(params: DemoCorpusParams, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write the demo dataset; returns {logical name: path relative to out_dir}.

    Layout: demo/shard-NNN.jsonl (pool; read back with base_dir=out_dir the ids equal
    generate_demo_shard's), reference.jsonl, heldout_reference.jsonl, tasks/<task>.jsonl, heldout_text.jsonl,
    kb.json. Same parameters give the same bytes.
    """
    out = Path(out_dir)
    files: dict[str, str] = {}
    for shard in range(params.n_shards):
        records = [{"text": d.text, **d.meta} for d in generate_demo_shard(params, shard)]
        files[f"shard-{shard:03d}"] = demo_shard_source(shard)
        atomic_write_text(out / files[f"shard-{shard:03d}"], _jsonl(records))
    files["reference"] = "reference.jsonl"
    atomic_write_text(out / "reference.jsonl", _jsonl(generate_reference(params, "reference")))
    files["heldout_reference"] = "heldout_reference.jsonl"
    atomic_write_text(out / "heldout_reference.jsonl", _jsonl(generate_reference(params, "heldout")))
    for name, items in generate_eval_tasks(params).items():
        files[name] = f"tasks/{name}.jsonl"
        atomic_write_text(out / files[name], _jsonl(items))
    files["heldout_text"] = "heldout_text.jsonl"
    atomic_write_text(out / "heldout_text.jsonl", _jsonl(generate_heldout_text(params)))
    files["kb"] = "kb.json"
    atomic_write_text(out / "kb.json", json.dumps(build_kb(params).as_json(), indent=1, ensure_ascii=False) + "\n")
    return files
