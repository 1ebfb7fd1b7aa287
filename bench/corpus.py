"""Synthetic but realistic catalog text for the search benchmark, generated from word lists.

The vocabulary is shaped so each benchmark query has a known kind:

* ``COMMON_TERM`` ("data") appears in about nine listings in ten;
* each of ``RARE_WORDS`` (dataset codenames) appears in about one listing in a thousand;
* the ``TWO_TERM`` words (a topic and a city) each appear in a few percent,
  together in well under one percent.

Text mixes English and Chinese words (the 'simple' text-search configuration
splits on spaces and punctuation, as merchants' bilingual titles are written).
"""

import random

COMMON_TERM = "data"
TWO_TERM = ("traffic", "guiyang")

TOPICS = [
    "traffic",
    "air",
    "quality",
    "weather",
    "rainfall",
    "energy",
    "electricity",
    "water",
    "census",
    "population",
    "housing",
    "rent",
    "retail",
    "sales",
    "logistics",
    "shipping",
    "port",
    "freight",
    "aviation",
    "rail",
    "metro",
    "taxi",
    "tourism",
    "hotel",
    "education",
    "school",
    "hospital",
    "clinic",
    "pharmacy",
    "insurance",
    "credit",
    "loans",
    "bonds",
    "equity",
    "payments",
    "tax",
    "budget",
    "procurement",
    "agriculture",
    "crops",
    "livestock",
    "mining",
    "steel",
    "cement",
    "manufacturing",
    "employment",
    "wages",
    "patents",
]
CITIES = [
    "guiyang",
    "shanghai",
    "beijing",
    "shenzhen",
    "guangzhou",
    "chengdu",
    "chongqing",
    "hangzhou",
    "wuhan",
    "nanjing",
    "tianjin",
    "xian",
    "suzhou",
    "zunyi",
    "kunming",
    "贵阳",
    "上海",
    "北京",
    "深圳",
    "广州",
    "成都",
    "重庆",
    "杭州",
]
NOUNS = [
    "records",
    "statistics",
    "index",
    "prices",
    "volumes",
    "counts",
    "survey",
    "register",
    "panel",
    "series",
    "readings",
    "observations",
    "transactions",
    "filings",
    "listings",
    "measurements",
    "inventory",
    "directory",
    "ledger",
]
ADJECTIVES = [
    "daily",
    "monthly",
    "quarterly",
    "annual",
    "regional",
    "national",
    "municipal",
    "historical",
    "anonymised",
    "aggregated",
    "verified",
    "realtime",
    "granular",
    "audited",
    "open",
]
CHINESE = [
    "数据",
    "交通",
    "金融",
    "医疗",
    "能源",
    "人口",
    "气象",
    "企业",
    "统计",
    "价格",
    "物流",
    "教育",
    "旅游",
    "税收",
    "就业",
    "农业",
]
FILLER = [
    "the",
    "of",
    "and",
    "for",
    "with",
    "by",
    "in",
    "from",
    "covering",
    "collected",
    "updated",
    "quality",
    "weekly",
    "sources",
    "coverage",
    "fields",
    "each",
    "row",
    "one",
    "per",
    "is",
    "are",
    "this",
    "dataset",
    "includes",
    "provided",
    "compiled",
    "cleaned",
    "standardised",
    "since",
    "until",
    "across",
    "level",
    "district",
    "province",
    "county",
    "station",
    "sensor",
    "operator",
    "license",
    "terms",
    "sample",
    "schema",
]
COLUMNS = [
    "id",
    "date",
    "timestamp",
    "city",
    "district",
    "province",
    "station_id",
    "sensor_id",
    "value",
    "unit",
    "amount",
    "currency",
    "price",
    "volume",
    "count",
    "category",
    "code",
    "name",
    "latitude",
    "longitude",
    "year",
    "month",
    "day",
    "hour",
    "pm25",
    "pm10",
    "no2",
    "temperature",
    "humidity",
    "passengers",
    "route_id",
    "stop_id",
    "company_id",
    "industry",
    "revenue",
    "employees",
    "population",
    "age",
    "gender",
]
_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ven",
    "tor",
    "sel",
    "an",
    "dri",
    "po",
    "lu",
    "xe",
    "qua",
    "mon",
    "bel",
    "ith",
    "or",
    "sa",
    "fin",
    "gor",
]


def rare_words(count: int = 1000, seed: int = 7) -> list[str]:
    """Distinct made-up dataset codenames ("kaloven", "tormisa", ...), each meant to be rare."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(3)))
    return sorted(words - set(TOPICS) - set(FILLER) - {COMMON_TERM})


RARE_WORDS = rare_words()
SELECTIVE_TERM = RARE_WORDS[1]  # listing 1 carries it, so even the smoke run matches
TAGS = sorted({*TOPICS, *ADJECTIVES, *CHINESE, "open-data", "api", "timeseries", "geospatial", "pii-free"})


class TextGenerator:
    """Titles, summaries, descriptions, column names and tags for one listing at a time."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def _words(self, pool, k):
        return self.rng.choices(pool, k=k)

    def listing(self, number: int) -> dict:
        rng = self.rng
        topic = rng.choice(TOPICS)
        title = [rng.choice(ADJECTIVES), topic, rng.choice(NOUNS)]
        if rng.random() < 0.5:
            title.append(rng.choice(CITIES))
        if rng.random() < 0.3:
            title.append(rng.choice(CHINESE))
        summary = [*self._words(ADJECTIVES, 2), *self._words(TOPICS, 2), *self._words(NOUNS, 2)]
        summary += self._words(FILLER, rng.randint(4, 9))
        if rng.random() < 0.5:
            summary.append(rng.choice(CITIES))
        rng.shuffle(summary)
        description = self._words(FILLER, rng.randint(25, 45))
        description += [*self._words(TOPICS, 2), rng.choice(CITIES), *self._words(NOUNS, 2)]
        description.append(RARE_WORDS[number % len(RARE_WORDS)] if rng.random() < 0.9 else rng.choice(RARE_WORDS))
        if rng.random() < 0.88:
            description.append(COMMON_TERM)
        if rng.random() < 0.3:
            description += self._words(CHINESE, 2)
        rng.shuffle(description)
        return {
            "title": " ".join(title).capitalize(),
            "summary": " ".join(summary).capitalize()[:300],
            "description": " ".join(description).capitalize() + ".",
            "column_names": " ".join(dict.fromkeys(self._words(COLUMNS, rng.randint(5, 10)))),
            "tags": sorted(set(self._words(TAGS, rng.randint(2, 4)))),
        }
