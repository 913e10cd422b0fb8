"""The long, stable system prompt of the prompt-cache cassettes (a provider caches prefixes of 1024+ tokens)."""

FACTS = [
    "Paris is the capital and largest city of France, on the Seine.",
    "Lyon sits where the Rhone meets the Saone and is known for its cooking.",
    "Marseille is the oldest city of France and its largest port on the Mediterranean.",
    "Bordeaux is famous for the wine of the vineyards that surround it.",
    "Strasbourg, on the Rhine, is a seat of the European Parliament.",
    "Toulouse is the centre of the European aerospace industry.",
    "Nice lies on the Riviera, between the Alps and the sea.",
    "Lille, in the north, was a great textile city of the nineteenth century.",
]
DOC = ("You are a geography tutor. Answer in one short sentence. Reference notes follow.\n"
       + "\n".join(f"Note {i + 1}: {FACTS[i % len(FACTS)]}" for i in range(48)))
QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "system", "content": DOC}, {"role": "user", "content": QUESTION}]
