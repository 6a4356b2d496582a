"""Synthetic English sentences for the MiniLM accuracy benchmark: templates filled from topic
vocabularies with a seeded rng (no downloads). Each item is one to several clauses about one topic,
so lengths range from a few tokens to past 128 (truncated by the tokenizer), and sentences on one
topic are near neighbours of each other, which is what the nearest-neighbour agreement measures.

    sentences(n, seed) -> list of n distinct strings
"""
from __future__ import annotations

import numpy as np

TOPICS = {
    "weather": dict(
        subj=["the storm", "a cold front", "the morning fog", "heavy rain", "the summer heat", "a light breeze",
              "the snowfall", "the forecast", "the wind", "a thunderstorm"],
        verb=["moved across", "settled over", "swept through", "lingered above", "flooded", "covered", "cooled",
              "battered", "drifted over", "reached"],
        obj=["the valley", "the coastal towns", "the northern hills", "the harbour", "the farmland", "the city centre",
             "the mountain pass", "the airport", "the lake", "the quiet suburbs"],
        tail=["before dawn", "for most of the weekend", "late on Tuesday", "without much warning", "as expected",
              "earlier than forecasters predicted", "for the third day in a row", "during the night"]),
    "cooking": dict(
        subj=["my grandmother", "the chef", "our neighbour", "the baker", "a young cook", "the restaurant",
              "my brother", "the recipe"],
        verb=["roasted", "baked", "simmered", "seasoned", "prepared", "served", "grilled", "stirred"],
        obj=["a pot of tomato soup", "fresh bread with garlic", "the chicken with lemon and thyme",
             "a chocolate cake", "vegetables in olive oil", "a spicy curry", "pancakes with maple syrup",
             "a bowl of rice and beans", "the onions until golden"],
        tail=["for the family dinner", "in a cast iron pan", "over low heat", "for about twenty minutes",
              "every Sunday morning", "before the guests arrived", "using an old recipe", "with too much salt"]),
    "sports": dict(
        subj=["the home team", "the young striker", "the coach", "the goalkeeper", "the tennis player",
              "the marathon runner", "the captain", "the visiting side", "the cyclist"],
        verb=["won", "lost", "dominated", "defended", "trained for", "prepared for", "celebrated", "missed"],
        obj=["the final match", "the championship", "the opening game", "a penalty in extra time",
             "the last lap", "the league title", "the semi-final", "a narrow victory"],
        tail=["in front of a packed stadium", "despite an early injury", "after months of practice",
              "on a rainy afternoon", "by a single point", "for the first time in ten years", "in the second half"]),
    "technology": dict(
        subj=["the new phone", "the software update", "the startup", "our laptop", "the search engine",
              "the engineers", "the database", "the cloud service", "the app", "the operating system"],
        verb=["crashed during", "improved", "slowed down", "released", "fixed", "encrypted", "synchronized",
              "deleted", "downloaded", "installed"],
        obj=["the battery life", "the user files", "a security patch", "the login screen", "the backup",
             "the network settings", "the latest version", "the graphics driver", "thousands of records"],
        tail=["after the last update", "without asking the user", "overnight", "in under a minute",
              "on older devices", "for millions of customers", "while the server restarted"]),
    "travel": dict(
        subj=["the tourists", "our flight", "the train", "my sister", "the tour guide", "the ferry", "a backpacker",
              "the hotel", "the bus driver"],
        verb=["arrived at", "departed from", "explored", "booked", "visited", "crossed", "left", "returned to"],
        obj=["the old harbour", "the mountain village", "the capital", "a small island", "the museum",
             "the train station", "the ancient temple", "the border", "a beach resort"],
        tail=["two hours late", "early in the morning", "after a long delay", "on a cheap ticket",
              "during the holidays", "with a heavy suitcase", "just before sunset"]),
    "health": dict(
        subj=["the doctor", "the nurse", "my father", "the patient", "the hospital", "the clinic", "the researchers",
              "the pharmacist"],
        verb=["recommended", "treated", "examined", "prescribed", "studied", "reduced", "monitored", "tested"],
        obj=["a daily walk", "the broken arm", "the fever", "a new vaccine", "blood pressure", "the headache",
             "a healthier diet", "the side effects", "the sleep patterns of children"],
        tail=["for two weeks", "after the surgery", "in a large trial", "with mild success", "every morning",
              "before the winter", "at the local clinic"]),
    "finance": dict(
        subj=["the central bank", "the stock market", "the company", "investors", "the government", "the bank",
              "the small business", "the economists"],
        verb=["raised", "cut", "reported", "borrowed", "invested", "lost", "predicted", "doubled"],
        obj=["interest rates", "quarterly profits", "the national debt", "its prices", "a large loan",
             "the budget deficit", "record revenue", "the value of the currency"],
        tail=["last quarter", "for the first time this year", "despite rising inflation", "after weak sales",
              "by two percent", "to the surprise of analysts", "in a difficult market"]),
    "science": dict(
        subj=["the astronomers", "the telescope", "the biologists", "a team of chemists", "the physicist",
              "the satellite", "the laboratory", "the geologists"],
        verb=["discovered", "observed", "measured", "analysed", "photographed", "simulated", "detected", "mapped"],
        obj=["a distant galaxy", "a new species of frog", "the structure of the protein", "the ocean floor",
             "a faint radio signal", "the age of the rocks", "the melting glaciers", "a rare mineral"],
        tail=["with a new instrument", "after years of work", "in a remote region", "using computer models",
              "for the first time", "near the south pole", "in a surprising result"]),
    "music": dict(
        subj=["the orchestra", "the band", "the singer", "a young pianist", "the choir", "the drummer",
              "the composer", "the jazz trio"],
        verb=["performed", "recorded", "rehearsed", "wrote", "played", "released", "sang", "practised"],
        obj=["a new album", "the symphony", "an old folk song", "the opening concert", "a quiet ballad",
             "the national anthem", "a sonata by Mozart", "their greatest hits"],
        tail=["to a sold out hall", "in a small studio", "late into the night", "for the festival",
              "without any rehearsal", "on the radio", "to a warm reception"]),
    "education": dict(
        subj=["the teacher", "the students", "the university", "my daughter", "the professor", "the school",
              "the class", "the librarian"],
        verb=["explained", "studied", "graded", "prepared", "read", "discussed", "taught", "reviewed"],
        obj=["the history exam", "a chapter on algebra", "the essays", "the science project", "a novel by Dickens",
             "the new curriculum", "the homework", "basic programming"],
        tail=["before the holidays", "in the library", "with great patience", "for the final test",
              "during the lecture", "after school", "over several weeks"]),
    "animals": dict(
        subj=["the cat", "our dog", "a family of ducks", "the old horse", "the fox", "a flock of birds",
              "the puppy", "the elephants", "a small rabbit"],
        verb=["chased", "slept near", "hid under", "followed", "watched", "ran across", "ignored", "found"],
        obj=["the garden fence", "the warm fireplace", "the neighbour's car", "the river bank", "a pile of leaves",
             "the open field", "the kitchen table", "the farmer"],
        tail=["all afternoon", "when it started to rain", "without making a sound", "every evening",
              "in the early morning", "until it got dark"]),
    "politics": dict(
        subj=["the president", "the parliament", "the mayor", "the opposition party", "the minister",
              "the city council", "voters", "the senator"],
        verb=["approved", "rejected", "debated", "announced", "criticized", "signed", "postponed", "supported"],
        obj=["the new tax law", "the election results", "a plan for public transport", "the trade agreement",
             "the housing policy", "the annual budget", "the climate bill"],
        tail=["after a long debate", "on Monday", "by a narrow margin", "despite public protests",
              "in a televised speech", "before the summer recess"]),
}

CONNECT = ["and then", "but", "while", "because", "so", "although", "after that", "meanwhile", "since"]
OPENERS = ["", "", "", "yesterday ", "last week ", "in the end ", "according to the report, ", "surprisingly, ",
           "once again ", "as usual "]
QUESTIONS = ["is it true that {s} {v} {o} {t}?", "nobody knows why {s} {v} {o}.", "who told you that {s} {v} {o}?"]


def _clause(rng, t) -> str:
    pick = lambda k: t[k][int(rng.integers(len(t[k])))]  # noqa: E731
    s, v, o = pick("subj"), pick("verb"), pick("obj")
    return f"{s} {v} {o} {pick('tail')}" if rng.random() < 0.7 else f"{s} {v} {o}"


def _item(rng) -> str:
    names = sorted(TOPICS)
    t = TOPICS[names[int(rng.integers(len(names)))]]
    n = int(rng.choice([1, 1, 1, 2, 2, 3, 4, 6, 9, 12]))  # up to ~12 clauses: past 128 tokens
    parts = [_clause(rng, t)]
    for _ in range(n - 1):
        if rng.random() < 0.15:  # an occasional clause from another topic
            parts.append(". " + _clause(rng, TOPICS[names[int(rng.integers(len(names)))]]))
        elif rng.random() < 0.4:
            parts.append(". " + _clause(rng, t))
        else:
            parts.append(", " + CONNECT[int(rng.integers(len(CONNECT)))] + " " + _clause(rng, t))
    text = OPENERS[int(rng.integers(len(OPENERS)))] + "".join(parts) + "."
    if n == 1 and rng.random() < 0.15:
        pick = lambda k: t[k][int(rng.integers(len(t[k])))]  # noqa: E731
        text = QUESTIONS[int(rng.integers(len(QUESTIONS)))].format(s=pick("subj"), v=pick("verb"), o=pick("obj"),
                                                                     t=pick("tail"))
    sents = [p.strip() for p in text.split(". ")]
    return ". ".join(p[:1].upper() + p[1:] for p in sents)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        s = _item(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


if __name__ == "__main__":
    for s in sentences(12):
        print(s)
