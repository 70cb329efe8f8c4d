"""The fixed sentences an int8 export of a text model is validated on (against its own fp32 graph).

Varied on purpose: lengths from one word to a long paragraph, questions and statements, opinions
of both polarities, names, numbers, dates, code, lists, informal and technical registers, a few
non-English sentences. A quantization that keeps these within the floor keeps real text within
it; eight similar sentences (the first wave's sample) hid a per-tensor quantization that lost a
sixth of the embedding (cosine 0.85 on real weights). Edit with care: the floors recorded in
every export's recipe were measured on exactly this list, and it is part of the recipe key.
"""

from __future__ import annotations

SENTENCES: list[str] = [
    "I love this movie, it is great.",
    "The film was terrible and I hate it.",
    "Paris is the capital of France.",
    "She went to the city with her mother in the morning.",
    "What a wonderful day!",
    "The company will change its program next year because of the new law.",
    "no",
    "Berlin, London and Rome are big old cities; the river is long and the mountain is high.",
    "I love using Hugging Face transformers!",
    "The service was slow, the food was cold, and nobody apologised.",
    "Absolutely brilliant performance by the whole cast.",
    "Meh.",
    "How do I reset my password if I no longer have access to my email account?",
    "Where can I find the nearest pharmacy that is open on Sunday?",
    "Is it going to rain tomorrow afternoon?",
    "The quarterly revenue increased by 12.5% to $4.3 billion, beating analyst estimates.",
    "Call me at 555-0199 before 6 p.m. on 14 March 2024.",
    "def add(a, b): return a + b",
    "SELECT name, email FROM users WHERE created_at > '2023-01-01' ORDER BY name;",
    "ERROR 503: upstream connect error or disconnect/reset before headers.",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A transformer encoder maps a sequence of tokens to contextual embeddings.",
    "The patient was prescribed 20 mg of atorvastatin once daily for high cholesterol.",
    "The defendant pleaded not guilty to all charges in the district court.",
    "Our cat knocked the glass off the table again, on purpose, while staring at me.",
    "lol that was sooo funny 😂😂",
    "omg cant believe its already friday!!!",
    "Please find attached the signed contract and the updated invoice.",
    "The train to Amsterdam departs from platform 7 at 09:42.",
    "Add two cups of flour, a pinch of salt and stir until smooth.",
    "The striker scored twice in the last ten minutes to win the cup final.",
    "Interest rates were left unchanged by the central bank this month.",
    "I am not sure this is a good idea, but let us try it anyway.",
    "It is not bad at all, actually quite good.",
    "I would not recommend this hotel to anyone.",
    "Never again.",
    "Best purchase I have made all year, the battery lasts for days.",
    "The screen cracked after a week and support never answered my emails.",
    "Le chat dort sur le canapé depuis ce matin.",
    "Der Zug hat heute wieder zwanzig Minuten Verspätung.",
    "El museo abre a las diez y cierra a las ocho.",
    "東京は日本の首都です。",
    "apples, oranges, bananas, grapes, pears",
    "1 2 3 4 5 6 7 8 9 10",
    "Why is the sky blue?",
    "Thanks!",
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
    "Climate change is driving more frequent and intense heatwaves across Europe.",
    "The new update broke the login page on Safari but works fine in Firefox.",
    "Can you recommend a good book about the history of mathematics?",
    "The meeting has been moved to Thursday; please update your calendars accordingly.",
    "Gradient descent updates the parameters in the direction that reduces the loss.",
    "He whispered that the treasure was buried beneath the old oak tree near the lighthouse.",
    "Warning: do not operate heavy machinery after taking this medication.",
    "The hikers reached the summit just before the storm rolled in from the west.",
    "My flight was cancelled, my luggage was lost, and the airline offered me a ten euro "
    "voucher, which I find insulting after waiting at the airport for eleven hours with two "
    "tired children and no information from anyone at the desk.",
    "Modeldepot mirrors models and datasets from the Hub, verifies every file by its sha256, "
    "records each revision in a registry, exports ONNX graphs that are validated against "
    "PyTorch, and serves all of it on a local network to clients that do not need to change "
    "a single line of code, which matters on sites where no machine may reach the internet.",
    "The committee, having reviewed the evidence submitted by both parties over the course of "
    "several months, concluded that the original decision should stand, although two members "
    "wrote a dissenting opinion arguing that the procedure had not been followed correctly.",
]
