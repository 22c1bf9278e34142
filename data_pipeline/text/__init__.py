"""Layer 4, text: studies -> token ids, loss masks and labels.

Modules: `tokenizer` (byte-level BPE, Hugging Face format), `chat_template` (the one CXRTrek chat
format), `checkpoint_template` (an imported checkpoint's own Jinja chat template, rendered and
tokenized as its Hugging Face processor does), `sequences` (one study -> a training sequence), `choice_options` (the options a closed
question lists), `decisive_answers` (closed answers cut to their deciding part), `image_labels` (a study's finding labels from its own stage-2 answers) and
`question_wording` (a data set's question script: the words its studies ask in, kept with a run).
"""

from data_pipeline.text.chat_template import ChatFormat
from data_pipeline.text.sequences import SequenceConfig, TrainingSequence, build_sequences
from data_pipeline.text.tokenizer import CXRTrekTokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "ChatFormat",
    "SequenceConfig", "TrainingSequence", "build_sequences",
    "CXRTrekTokenizer", "load_tokenizer", "train_tokenizer",
]
