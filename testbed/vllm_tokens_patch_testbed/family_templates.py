"""Our own chat templates and tiny tokenizers for ten chat-template families and one strict template.

Every template is written here from the structure facts of each family (turn markers, where tools and tool
results go, what is dropped on re-render); none is copied from a model repository. Each tokenizer is a
byte-level BPE of about 700 ids trained offline on `CORPUS` with the family's markers as special tokens.
"""

# ruff: noqa: RUF001 (DeepSeek's markers are spelled with FULLWIDTH VERTICAL LINE on purpose)
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = """
The quick brown fox jumps over the lazy dog. Hello world, how are you today? I am fine, thank you.
What is the weather in Paris? It is sunny and warm in Paris. What about Lima and Oslo? Rain in Oslo.
Let me think step by step. First the question, then the answer. The answer is 42. Finally done.
Tell me a story about a robot that learns to paint. Once upon a time a small robot painted the sea.
{"name": "get_weather", "arguments": {"city": "Paris"}} {"city": "Lima", "unit": "celsius"} 21 degrees.
You are a helpful assistant. Cutting Knowledge Date: December 2023. Today Date: 26 Jul 2024. Tools.
def add(a, b): return a + b. Numbers 0 1 2 3 4 5 6 7 8 9 10 100. Punctuation , . ; : ! ? ( ) [ ] { } " '
Go on, please. The robot mixed blue and green, then painted waves, boats, birds and a bright yellow sun.
Reinforcement learning trainers want the exact tokens; decoding and encoding again is not the identity.
A tool call returns a result; the assistant reads the tool response and answers the user question.
Be brief. Thanks! Good morning, good evening, good night. Which city is colder, Oslo or Lima? Oslo.
Functions, parameters, properties, required, description, string, number, object, type, unit, city.
"""
VOCAB_SIZE = 700


def _args() -> str:
    """Jinja: a call's arguments as JSON (a string is already JSON, as in OpenAI requests)."""
    return (
        "{%- if call.function.arguments is string %}{{- call.function.arguments }}"
        "{%- else %}{{- call.function.arguments | tojson }}{%- endif %}"
    )


# Pieces the families share (each family's template is still written out below, in the order it renders).
_SYSTEM_FIRST = """{%- for message in messages %}
{%- if message.role == 'system' %}
{%- if not loop.first %}{{- raise_exception('the system message must come first') }}{%- endif %}
"""
"""Open the message loop; a system message is allowed only first (it was rendered before the loop)."""
_UNKNOWN_ROLE = """{%- else %}{{- raise_exception('unknown role ' + message.role) }}
{%- endif %}
{%- endfor %}
"""
"""Refuse any other role and close the message loop."""
_CHATML_USER = (
    "{%- elif message.role == 'user' %}{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}\n"
)
_CHATML_GENERATION_PROMPT = """{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""


def _chatml_tool_results(role: str) -> str:
    """Consecutive tool results merged into one ChatML turn of `role`."""
    return (
        """{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>"""
        + role
        + """' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
"""
    )


def _chatml_tool_calls(content: str) -> str:
    """An assistant turn's calls in ChatML (a newline before each but a first one with no `content`),
    then the close of the turn."""
    return (
        "{%- for call in message.tool_calls or [] %}\n{%- if "
        + content
        + """ or not loop.first %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n{"name": "' + call.function.name + '", "arguments": ' }}"""
        + _args()
        + """{{- '}\\n</tool_call>' }}
{%- endfor %}{{- '<|im_end|>\\n' }}
"""
    )


# 1. ChatML / Qwen2.5: default system, tools in the system turn, tool results merged into one user turn.
CHATML = (
    """{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}
{%- else %}{%- set system = 'You are a helpful assistant.' %}{%- endif %}
{{- '<|im_start|>system\\n' + system }}
{%- if tools %}{{- '\\n\\n# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools>' }}{%- endif %}
{{- '<|im_end|>\\n' }}
"""
    + _SYSTEM_FIRST
    + _CHATML_USER
    + """{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + (message.content or '') }}
"""
    + _chatml_tool_calls("message.content")
    + _chatml_tool_results("user")
    + _UNKNOWN_ROLE
    + _CHATML_GENERATION_PROMPT
)

# 2. Qwen3: ChatML + reasoning in the content; drops it from turns before the last user query.
QWEN3 = (
    """{%- set ns = namespace(last_query=-1) %}
{%- for message in messages %}
{%- if message.role == 'user' %}{%- set ns.last_query = loop.index0 %}{%- endif %}
{%- endfor %}
{%- if tools or messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- endif %}
{%- if tools %}{%- if messages[0].role == 'system' %}{{- '\\n\\n' }}{%- endif %}{{- '# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools>' }}{%- endif %}
{{- '<|im_end|>\\n' }}{%- endif %}
"""
    + _SYSTEM_FIRST
    + _CHATML_USER
    + """{%- elif message.role == 'assistant' %}{%- set content = message.content or '' %}
{%- if loop.index0 < ns.last_query and '</think>' in content %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
{{- '<|im_start|>assistant\\n' + content }}
"""
    + _chatml_tool_calls("content")
    + _chatml_tool_results("user")
    + _UNKNOWN_ROLE
    + """{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}"""
)

# 3. Llama 3: BOS once, a dated system preamble always (the system message follows it), custom tools in
# the first user turn, tool results as `ipython`. A turn that calls tools ends with `<|eom_id|>` (the model
# stops there to wait for the result), every other turn with `<|eot_id|>`.
LLAMA3 = (
    """{%- if date_string is not defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}
{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}{%- set rest = messages[1:] %}
{%- else %}{%- set system = '' %}{%- set rest = messages %}{%- endif %}
{{- '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string }}
{%- if system %}{{- '\\n\\n' + system }}{%- endif %}{{- '<|eot_id|>' }}
{%- set ns = namespace(tools_done=not tools) %}
{%- for message in rest %}
{%- if message.role == 'user' %}{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' }}
{%- if not ns.tools_done %}{{- 'Given the following functions, reply with a JSON function call.\\n\\n' }}
{%- for tool in tools %}{{- (tool | tojson) + '\\n\\n' }}{%- endfor %}
{%- set ns.tools_done = true %}{%- endif %}
{{- message.content + '<|eot_id|>' }}
{%- elif message.role == 'assistant' %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{{- '{"name": "' + call.function.name + '", "parameters": ' }}"""
    + _args()
    + """{{- '}' }}
{%- endfor %}
{%- if message.tool_calls %}{{- '<|eom_id|>' }}{%- else %}{{- '<|eot_id|>' }}{%- endif %}
{%- elif message.role in ['tool', 'ipython'] %}
{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
"""
    + _UNKNOWN_ROLE
    + "{%- if add_generation_prompt %}"
    + "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# 4. GLM: no end-of-turn token; the next role marker ends a turn. Run without thinking: history and the
# generation prompt carry an empty `<think></think>`.
GLM = (
    """{{- '[gMASK]<sop>' }}
{%- if tools or messages[0].role == 'system' %}{{- '<|system|>\\n' }}
{%- if tools %}{{- '# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>' }}{%- if messages[0].role == 'system' %}{{- '\\n\\n' }}{%- endif %}{%- endif %}
{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- endif %}{%- endif %}
"""
    + _SYSTEM_FIRST
    + """{%- elif message.role == 'user' %}{{- '<|user|>\\n' + message.content }}
{%- elif message.role == 'assistant' %}{{- '<|assistant|>\\n<think></think>\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{{- '\\n<tool_call>' + call.function.name + '\\n' }}"""
    + _args()
    + """{{- '</tool_call>' }}
{%- endfor %}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|observation|>' }}{%- endif %}
{{- '\\n<tool_response>' + message.content + '</tool_response>' }}
"""
    + _UNKNOWN_ROLE
    + """{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think></think>\\n' }}{%- endif %}
{%- endif %}"""
)

# 5. Mistral [INST]: strict user/assistant alternation (tool-calling turns aside); the system prompt (and
# nothing else) is folded into the LAST user turn; tool results must follow an assistant turn that called
# tools. No generation prompt.
MISTRAL = (
    """{%- if messages[0].role == 'system' %}
{%- set system = messages[0].content %}{%- set rest = messages[1:] %}
{%- else %}{%- set system = '' %}{%- set rest = messages %}{%- endif %}
{%- set ns = namespace(last_user=-1, turn=0, calls=false) %}
{%- for message in rest %}{%- if message.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}
{%- endfor %}
{{- '<s>' }}
{%- if tools %}{{- '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}{%- endif %}
{%- for message in rest %}
{%- if message.role == 'tool' %}
{%- if not ns.calls %}{{- raise_exception('a tool result must follow an assistant tool call') }}{%- endif %}
{{- '[TOOL_RESULTS]' + ({'call_id': message.tool_call_id, 'content': message.content} | tojson) }}
{{- '[/TOOL_RESULTS]' }}
{%- elif message.role in ['user', 'assistant'] %}
{%- if message.role == 'user' or not message.tool_calls %}
{%- if (message.role == 'user') != (ns.turn % 2 == 0) %}
{{- raise_exception('conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}
{%- set ns.turn = ns.turn + 1 %}{%- endif %}
{%- if message.role == 'user' %}{%- set ns.calls = false %}{{- '[INST] ' }}
{%- if system and loop.index0 == ns.last_user %}{{- system + '\\n\\n' }}{%- endif %}
{{- message.content + ' [/INST]' }}
{%- else %}{{- message.content or '' }}
{%- if message.tool_calls %}{%- set ns.calls = true %}{{- '[TOOL_CALLS][' }}
{%- for call in message.tool_calls %}{%- if not loop.first %}{{- ', ' }}{%- endif %}
{{- '{"name": "' + call.function.name + '", "arguments": ' }}"""
    + _args()
    + """{{- ', "id": "' + call.id + '"}' }}
{%- endfor %}{{- ']' }}
{%- else %}{%- set ns.calls = false %}{%- endif %}
{{- '</s>' }}
{%- endif %}
{%- else %}{{- raise_exception('unknown role ' + message.role) }}
{%- endif %}
{%- endfor %}"""
)

# 6. Hermes: ChatML with Hermes tool calls and a `tool` role turn holding consecutive tool responses.
HERMES = (
    """{%- if tools or messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- endif %}
{%- if tools %}{%- if messages[0].role == 'system' %}{{- ' ' }}{%- endif %}
{{- 'You may call functions. Function signatures are in <tools></tools>: <tools>' }}
{%- for tool in tools %}{{- ' ' + (tool | tojson) }}{%- endfor %}{{- ' </tools>' }}{%- endif %}
{{- '<|im_end|>\\n' }}{%- endif %}
"""
    + _SYSTEM_FIRST
    + _CHATML_USER
    + """{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{{- '\\n<tool_call>\\n{"arguments": ' }}"""
    + _args()
    + """{{- ', "name": "' + call.function.name + '"}\\n</tool_call>' }}
{%- endfor %}{{- '<|im_end|>\\n' }}
"""
    + _chatml_tool_results("tool")
    + _UNKNOWN_ROLE
    + _CHATML_GENERATION_PROMPT
)

# 7. DeepSeek-V3 / R1: the system prompt right after BOS, no newline glue; R1-style, the reasoning of every
# assistant turn but the final message is dropped (also inside a tool loop).
DEEPSEEK = (
    """{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}
{%- else %}{%- set system = '' %}{%- endif %}
{{- '<｜begin▁of▁sentence｜>' + system }}
{%- if tools %}{{- '\\n\\n## Tools\\n' }}
{%- for tool in tools %}{{- (tool | tojson) + '\\n' }}{%- endfor %}{%- endif %}
"""
    + _SYSTEM_FIRST
    + """{%- elif message.role == 'user' %}{{- '<｜User｜>' + message.content }}
{%- elif message.role == 'assistant' %}{%- set content = message.content or '' %}
{%- if not loop.last and '</think>' in content %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
{{- '<｜Assistant｜>' + content }}
{%- if message.tool_calls %}{{- '<｜tool▁calls▁begin｜>' }}
{%- for call in message.tool_calls %}
{{- '<｜tool▁call▁begin｜>function<｜tool▁sep｜>' + call.function.name + '\\n```json\\n' }}"""
    + _args()
    + """{{- '\\n```<｜tool▁call▁end｜>' }}
{%- endfor %}{{- '<｜tool▁calls▁end｜>' }}{%- endif %}
{{- '<｜end▁of▁sentence｜>' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<｜tool▁outputs▁begin｜>' }}{%- endif %}
{{- '<｜tool▁output▁begin｜>' + message.content + '<｜tool▁output▁end｜>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<｜tool▁outputs▁end｜>' }}{%- endif %}
"""
    + _UNKNOWN_ROLE
    + """{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}"""
)


# 8. DeepSeek-V3: every system message, wherever it is, joined (blank line between) right after BOS; the
# loop renders user, assistant and tool turns only, so any other role (`developer`) is rendered nowhere.
DEEPSEEK_V3 = (
    """{%- set ns = namespace(system='', first=true) %}
{%- for message in messages %}{%- if message.role == 'system' %}
{%- if not ns.first %}{%- set ns.system = ns.system + '\n\n' %}{%- endif %}
{%- set ns.system = ns.system + message.content %}{%- set ns.first = false %}
{%- endif %}{%- endfor %}
{{- '<｜begin▁of▁sentence｜>' + ns.system }}
{%- if tools %}{{- '\n\n## Tools\n' }}
{%- for tool in tools %}{{- (tool | tojson) + '\n' }}{%- endfor %}{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}{{- '<｜User｜>' + message.content }}
{%- elif message.role == 'assistant' %}{{- '<｜Assistant｜>' + (message.content or '') }}
{%- if message.tool_calls %}{{- '<｜tool▁calls▁begin｜>' }}
{%- for call in message.tool_calls %}
{{- '<｜tool▁call▁begin｜>function<｜tool▁sep｜>' + call.function.name + '\n```json\n' }}"""
    + _args()
    + """{{- '\n```<｜tool▁call▁end｜>' }}
{%- endfor %}{{- '<｜tool▁calls▁end｜>' }}{%- endif %}
{{- '<｜end▁of▁sentence｜>' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<｜tool▁outputs▁begin｜>' }}{%- endif %}
{{- '<｜tool▁output▁begin｜>' + message.content + '<｜tool▁output▁end｜>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<｜tool▁outputs▁end｜>' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}"""
)

# 9. ChatML, merged instructions: ONE system turn first, holding every system and developer message of the
# conversation, wherever it is (blank line between), then the tools; none when there are neither.
CHATML_MERGED = (
    """{%- set ns = namespace(system='', first=true) %}
{%- for message in messages %}{%- if message.role in ['system', 'developer'] %}
{%- if not ns.first %}{%- set ns.system = ns.system + '\n\n' %}{%- endif %}
{%- set ns.system = ns.system + message.content %}{%- set ns.first = false %}
{%- endif %}{%- endfor %}
{%- if tools or not ns.first %}{{- '<|im_start|>system\n' + ns.system }}
{%- if tools %}{%- if not ns.first %}{{- '\n\n' }}{%- endif %}{{- '# Tools\n<tools>' }}
{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}{{- '\n</tools>' }}{%- endif %}
{{- '<|im_end|>\n' }}{%- endif %}
{%- for message in messages %}
{%- if message.role in ['system', 'developer'] %}
"""
    + _CHATML_USER
    + """{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\n' + (message.content or '') }}
"""
    + _chatml_tool_calls("message.content")
    + _chatml_tool_results("user")
    + _UNKNOWN_ROLE
    + _CHATML_GENERATION_PROMPT
)

# 10. ChatML, instructions in place: as 1, but a system or developer message anywhere else is a turn of its
# own where it stands (what Qwen2.5's template does with a system message that is not the first).
CHATML_INLINE = (
    """{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}
{%- else %}{%- set system = 'You are a helpful assistant.' %}{%- endif %}
{{- '<|im_start|>system\n' + system }}
{%- if tools %}{{- '\n\n# Tools\n<tools>' }}
{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}{{- '\n</tools>' }}{%- endif %}
{{- '<|im_end|>\n' }}
{%- for message in messages %}
{%- if message.role in ['system', 'developer'] %}
{%- if message.role == 'developer' or not loop.first %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}
"""
    + _CHATML_USER
    + """{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\n' + (message.content or '') }}
"""
    + _chatml_tool_calls("message.content")
    + _chatml_tool_results("user")
    + _UNKNOWN_ROLE
    + _CHATML_GENERATION_PROMPT
)


# 11. Strict: ChatML-shaped, but every tool result must answer a call (by id) of the assistant turn before.
# The `named` variant also renders the answered function's name in each result (looked up by id, as
# templates do whose results carry the function name).
def _strict(named: bool) -> str:
    name = "' name=\"' + found[0].function.name + '\"'" if named else "''"
    return (
        """{%- if messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}
{%- set ns = namespace(calls=[]) %}
"""
        + _SYSTEM_FIRST
        + """{%- elif message.role == 'user' %}{%- set ns.calls = [] %}
{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}{%- set ns.calls = message.tool_calls or [] %}
{{- '<|im_start|>assistant\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{{- '<tool_call>{"id": "' + call.id + '", "name": "' + call.function.name + '", "arguments": ' }}"""
        + _args()
        + """{{- '}</tool_call>' }}
{%- endfor %}{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- set found = ns.calls | selectattr('id', 'equalto', message.tool_call_id) | list %}
{%- if not found %}
{{- raise_exception('tool result ' + (message.tool_call_id or '?') + ' answers no tool call before it') }}
{%- endif %}
{%- if messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>tool' }}{%- endif %}
{{- '\\n<response id="' + message.tool_call_id + '"' + """
        + name
        + """ + '>' + message.content + '</response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
"""
        + _UNKNOWN_ROLE
        + _CHATML_GENERATION_PROMPT
    )


STRICT = _strict(named=False)
STRICT_NAMED = _strict(named=True)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    special_tokens: tuple[str, ...]
    stops: tuple[str, ...]
    """The end-of-turn tokens the model samples (the template's close of the turn tells which); empty: the
    model ends its turn with the next role marker."""
    glue: str
    """Template text after the stop that the model never samples (ChatML's newline)."""
    turn_ends: tuple[str, ...]
    """The ids that end a turn: the N-th of them in a render is the end of the N-th turn that has one."""
    other_stop: str | None
    """A stop id that begins neither the close nor the next turn (None: the family has no such id)."""
    next_markers: Mapping[str, str] = field(default_factory=dict)
    """GLM-style: the marker the model samples to end its turn, by the role of the message that follows."""
    reasoning: bool = False
    """Assistant contents carry `<think>\\n...\\n</think>\\n\\n` reasoning (the template may drop it)."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The chat-template kwargs every scenario of this family is rendered with."""


def _special(spaced: str) -> tuple[str, ...]:
    """A family's special tokens, written space-separated."""
    return tuple(spaced.split())


CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>")


def _turns(stop: str, *, glue: str = "", other_stop: str | None = None) -> dict[str, Any]:
    """How a family ends a turn when one stop token, which the model samples, closes every turn."""
    return {"stops": (stop,), "glue": glue, "turn_ends": (stop,), "other_stop": other_stop}


CHATML_TURNS = _turns("<|im_end|>", glue="\n", other_stop="<|endoftext|>")
"""How every ChatML-shaped family ends a turn."""
FAMILIES = {
    family.name: family
    for family in [
        Family(
            "chatml",
            CHATML,
            (*CHATML_TOKENS, "<tool_response>", "</tool_response>"),
            **CHATML_TURNS,
        ),
        Family(
            "qwen3",
            QWEN3,
            (*CHATML_TOKENS, "<tool_response>", "</tool_response>", "<think>", "</think>"),
            **CHATML_TURNS,
            reasoning=True,
        ),
        Family(
            "llama3",
            LLAMA3,
            ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"),
            stops=("<|eot_id|>", "<|eom_id|>"),
            glue="",
            turn_ends=("<|eot_id|>", "<|eom_id|>"),
            other_stop="<|eom_id|>",
        ),
        Family(
            "glm",
            GLM,
            _special(
                "[gMASK] <sop> <|system|> <|user|> <|assistant|> <|observation|> <|endoftext|> "
                "<think> </think> <tool_call> </tool_call> <tool_response> </tool_response>"
            ),
            stops=(),
            glue="",
            turn_ends=("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
            other_stop="<|endoftext|>",
            next_markers={"user": "<|user|>", "tool": "<|observation|>"},
            kwargs={"enable_thinking": False},
        ),
        Family(
            "mistral",
            MISTRAL,
            _special(
                "<s> </s> [INST] [/INST] [TOOL_CALLS] [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] "
                "[TOOL_RESULTS] [/TOOL_RESULTS]"
            ),
            **_turns("</s>"),
        ),
        Family(
            "hermes",
            HERMES,
            (*CHATML_TOKENS, "<tool_response>", "</tool_response>", "<tools>", "</tools>"),
            **CHATML_TURNS,
        ),
        Family(
            "deepseek",
            DEEPSEEK,
            _special(
                "<｜begin▁of▁sentence｜> <｜end▁of▁sentence｜> <｜User｜> <｜Assistant｜> "
                "<｜tool▁calls▁begin｜> <｜tool▁calls▁end｜> <｜tool▁call▁begin｜> <｜tool▁call▁end｜> "
                "<｜tool▁sep｜> <｜tool▁outputs▁begin｜> <｜tool▁outputs▁end｜> <｜tool▁output▁begin｜> "
                "<｜tool▁output▁end｜> <think> </think>"
            ),
            **_turns("<｜end▁of▁sentence｜>"),
            reasoning=True,
        ),
        Family(
            "deepseek_v3",
            DEEPSEEK_V3,
            _special(
                "<｜begin▁of▁sentence｜> <｜end▁of▁sentence｜> <｜User｜> <｜Assistant｜> "
                "<｜tool▁calls▁begin｜> <｜tool▁calls▁end｜> <｜tool▁call▁begin｜> <｜tool▁call▁end｜> "
                "<｜tool▁sep｜> <｜tool▁outputs▁begin｜> <｜tool▁outputs▁end｜> <｜tool▁output▁begin｜> "
                "<｜tool▁output▁end｜>"
            ),
            **_turns("<｜end▁of▁sentence｜>"),
        ),
        Family(
            "chatml_merged",
            CHATML_MERGED,
            (*CHATML_TOKENS, "<tool_response>", "</tool_response>"),
            **CHATML_TURNS,
        ),
        Family(
            "chatml_inline",
            CHATML_INLINE,
            (*CHATML_TOKENS, "<tool_response>", "</tool_response>"),
            **CHATML_TURNS,
        ),
        Family(
            "strict",
            STRICT,
            CHATML_TOKENS,
            **CHATML_TURNS,
        ),
        Family(
            "strict_named",
            STRICT_NAMED,
            CHATML_TOKENS,
            **CHATML_TURNS,
        ),
    ]
}


def build_tokenizer(family: Family, path: Path) -> Any:
    """Train the family's tiny byte-level BPE offline into `path`; return it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(family.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 20, trainer=trainer)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_file=str(path / "tokenizer.json"), clean_up_tokenization_spaces=False
    )
    fast.chat_template = family.template
    return fast
