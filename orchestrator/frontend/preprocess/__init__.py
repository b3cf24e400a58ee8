"""The frontend's preprocessing and postprocessing of text, per model.

`ModelTokenizer` loads a model's tokenizer and chat template from local files and
turns requests into token ids; per output stream, an `IncrementalDecoder` turns
token ids back into text and a `StopJail` ends the stream at a stop string without
showing it.
"""

from orchestrator.frontend.preprocess.chat_template import ChatTemplate
from orchestrator.frontend.preprocess.detokenizer import IncrementalDecoder
from orchestrator.frontend.preprocess.stop import StopJail
from orchestrator.frontend.preprocess.tokenizer import ModelTokenizer

__all__ = ["ChatTemplate", "IncrementalDecoder", "ModelTokenizer", "StopJail"]
