"""Typed errors with messages a user can act on. Library code raises these; the CLI prints them."""


class Llama2pyError(Exception):
    """Base class: the message says what is wrong and what to do."""


CLOSED = "this model was closed; load the checkpoint again with Llama.load(...)"  # Llama's and a backend's


class ClosedError(Llama2pyError):
    """The model (a Llama or its backend) was closed: load the checkpoint again."""


class BusyError(Llama2pyError):
    """The Llama is running a call in another thread (or this call comes from inside one of its
    callbacks), or a stream was superseded by a later call: one call at a time per Llama."""


class CheckpointError(Llama2pyError):
    """A checkpoint file is missing, truncated, padded or of an unknown format."""


class TokenizerError(Llama2pyError):
    """A tokenizer file is missing, corrupt, or does not fit the model."""


class PromptError(Llama2pyError):
    """A prompt (or batch of prompts) does not fit the model's context or the batch limit."""


def count(n: int, noun: str) -> str:
    """'1 thread', '2 threads': n and the noun, plural unless n is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def too_long(what: str, seq_len: int) -> PromptError:
    """The error of a prompt (or chat turn) that cannot fit the context; what says how long it is."""
    return PromptError(
        f"{what}, but the context is {count(seq_len, 'position')} (the checkpoint's seq_len, or a smaller "
        "--context / context=); shorten it"
    )


class DeviceError(Llama2pyError):
    """A backend cannot run here: no GPU, no CuPy, not enough memory, extension not built."""


class ResourceError(Llama2pyError):
    """What was asked for would not fit the available memory (KV cache, buffers, batch)."""


class NonFiniteError(Llama2pyError):
    """The model produced NaN or Inf logits (NaN/Inf or overflowing weights in the checkpoint)."""


class DownloadError(Llama2pyError):
    """A model could not be fetched or failed its checksum."""


class UsageError(Llama2pyError):
    """Flags the command cannot take together (or a flag value it checks after parsing): the CLI
    exits 2, as for any bad flag."""


def usage_check(check, *args):
    """check(*args), its Llama2pyError turned into a UsageError: for a library check (a shape, a
    group size) that the CLI runs on values its flags gave."""
    try:
        return check(*args)
    except UsageError:
        raise
    except Llama2pyError as e:
        raise UsageError(str(e)) from None


class OutputError(Llama2pyError):
    """An output file cannot be written: missing or unwritable folder, a directory, or an input file."""


class ConvertError(Llama2pyError):
    """A model to convert (Hugging Face, Meta, sentencepiece) is unreadable or not llama2.c-shaped."""
