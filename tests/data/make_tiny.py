"""Writes the tiny dataset the tests run on (committed; rerun only to change it).

40 users with demographics, 60 items with a title (token_seq), genres (token_seq) and a price
(float), 600 rated interactions whose ratings depend on whether a user likes the item's genre.
"""

import os

import numpy as np

rng = np.random.default_rng(7)
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny")
genres = ["action", "comedy", "drama", "horror", "romance"]
words = ["red", "blue", "night", "day", "city", "river", "king", "star"]

with open(os.path.join(here, "tiny.user"), "w") as f:
    f.write("user_id:token\tage:token\tgender:token\tfavourite:token\n")
    favourites = {}
    for u in range(1, 41):
        favourites[u] = genres[rng.integers(len(genres))]
        f.write(f"u{u}\t{rng.choice(['18-25', '26-35', '36-50'])}\t{rng.choice(['M', 'F'])}\t{favourites[u]}\n")

with open(os.path.join(here, "tiny.item"), "w") as f:
    f.write("item_id:token\ttitle:token_seq\tclass:token_seq\tprice:float\n")
    item_genres = {}
    for i in range(1, 61):
        item_genres[i] = list(rng.choice(genres, size=rng.integers(1, 3), replace=False))
        # Every tenth item has an empty title, so empty token_seq cells are exercised.
        title = "" if i % 10 == 0 else " ".join(rng.choice(words, size=rng.integers(1, 4)))
        f.write(f"i{i}\t{title}\t{' '.join(item_genres[i])}\t{rng.uniform(5, 50):.2f}\n")

popularity = 1.0 / np.arange(1, 61) ** 0.8
pairs = set()
while len(pairs) < 600:
    u = int(rng.integers(1, 41))
    i = int(rng.choice(np.arange(1, 61), p=popularity / popularity.sum()))
    pairs.add((u, i))
with open(os.path.join(here, "tiny.inter"), "w") as f:
    f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    for t, (u, i) in enumerate(sorted(pairs)):
        liked = favourites[u] in item_genres[i]
        rating = int(np.clip(rng.normal(4.2 if liked else 2.6, 0.8), 1, 5).round())
        f.write(f"u{u}\ti{i}\t{rating}\t{1000 + t}\n")
