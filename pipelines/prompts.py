"""Wan2.2's prompts as its release writes and cleans them, and the prompts the attack assumes when the adversary's is
unknown. Standard library only.

The release cleans every prompt before its umT5 tokenizer (wan/modules/tokenizers.py, clean="whitespace"; diffusers'
WanImageToVideoPipeline does the same): ftfy.fix_text, HTML entities unescaped twice, runs of whitespace made one
space, the ends stripped. clean_prompt writes out the parts of ftfy.fix_text (ftfy 6) that reach the token ids:

  - HTML entities ending in ";" unescaped once more, up to the first line holding a "<" (ftfy's
    unescape_html="auto"; its all-capital forms such as "&EACUTE;" are not read);
  - C1 control characters (U+0080-U+009F) read as Windows-1252 ("\\x85" -> "…"), as browsers do;
  - ANSI terminal escapes removed; curly quotes straightened (‘ ’ ‚ ‛ ʼ -> ', “ ” „ ‟ -> ");
  - line breaks unified, the control characters ftfy drops dropped, then NFC.
Left to the tokenizer, whose nmt_nfkc rules do the same: ligatures and full-width characters (NFKC). Not reproduced:
ftfy's repair of mojibake (text decoded with the wrong codec, "Ã©" for "é"): a prompt typed by a person has none.
"""
import html
import re
import unicodedata

# wan/configs/shared_config.py, sample_neg_prompt: what the release's pipeline guides away from when the user gives no
# negative prompt (textimage2video.py: `if n_prompt == "": n_prompt = self.sample_neg_prompt`). In English: garish
# colours, overexposed, static, blurred details, subtitles, style, artwork, painting, picture, still, overall grey,
# worst quality, low quality, JPEG artefacts, ugly, mutilated, extra fingers, badly drawn hands, badly drawn face,
# deformed, disfigured, malformed limbs, fused fingers, motionless frame, cluttered background, three legs, many people
# in the background, walking backwards.
RELEASE_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                           "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的"
                           "肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
# generate.py, EXAMPLE_PROMPT["ti2v-5B"]: the prompt the release's command line uses when it is given none
RELEASE_EXAMPLE_PROMPT = ("Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a "
                          "spotlighted stage.")
# What the attack assumes the adversary writes when --prompt is not given: a few plain requests to animate a photo of
# a person, one drawn per iteration (each with its own V_0), as ControlNeXt's generic motions stand in for its
# unknown poses. Generic on purpose: never written for one photo.
ATTACK_PROMPTS = ("The person in the photo looks at the camera, smiles and turns their head slowly.",
                  "The person talks to the camera, moving their hands as they speak.",
                  "The person walks forward while the camera follows them.")

ENTITY = re.compile("&#?[0-9A-Za-z]{1,24};")
ANSI_ESCAPE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
SINGLE_QUOTES, DOUBLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]"), re.compile("[\u201c-\u201f]")
LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029]")  # ftfy's fix_line_breaks; "\x85" is "…" by then
C1_AS_WINDOWS_1252 = {i: bytes([i]).decode("cp1252", errors="ignore") or chr(i) for i in range(0x80, 0xA0)}
DROPPED_CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070),
                                  0xFEFF, *range(0xFFF9, 0xFFFD)])


def fix_line(line, unescape):
    """One line through the fixes of ftfy.fix_text that change token ids, repeated until nothing changes (as ftfy
    repeats them)."""
    while True:
        before = line
        line = ENTITY.sub(lambda m: m[0] if ";" in html.unescape(m[0]) else html.unescape(m[0]), line) if unescape \
            else line
        line = line.translate(C1_AS_WINDOWS_1252)
        line = SINGLE_QUOTES.sub("'", DOUBLE_QUOTES.sub('"', line))
        line = LINE_BREAKS.sub("\n", line)
        line = ANSI_ESCAPE.sub("", line).translate(DROPPED_CONTROLS)
        line = unicodedata.normalize("NFC", line)
        if line == before:
            return line


def clean_prompt(text):
    """The release's prompt cleaning (see the module docstring): ftfy's fixes line by line, HTML entities unescaped
    twice, whitespace runs made one space, the ends stripped."""
    lines, unescape = [], True
    for line in re.findall("[^\n]*\n|[^\n]+", text):  # ftfy's segments: lines ending in "\n"
        unescape = unescape and "<" not in line  # once a line holds "<", ftfy unescapes no further line
        lines.append(fix_line(line, unescape))
    text = html.unescape(html.unescape("".join(lines))).strip()
    return re.sub(r"\s+", " ", text).strip()
