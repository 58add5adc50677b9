"""Live coaching: timestamped feedback from a sliding window over a long video or a camera stream.

One concept per module:

- `windows`: which frames each window of a timeline holds, as the model's frame sampler picks them;
- `frames`: frame sources (a video file, at its true pace or as fast as it decodes; a camera or stream) and
  the bounded ring buffer the windows are cut from;
- `cache`: per-frame work (preprocessing, CLIP features) shared by overlapping windows;
- `suppress`: what is worth saying (no silence answers, no repeats of the last feedback);
- `events`: feedback events and their JSONL log; `outputs`: SRT subtitles and a captioned video copy;
- `session`: the live loop (window → answer → event), with real-time pacing and window skipping;
- `labels`: the timestamped feedback label format (references and training labels);
- `scoring`: T-F-Score with METEOR / ROUGE-L on time-matched feedback, as QEVD scores live feedback;
- `dataset`: long labelled sessions → window samples for finetuning;
- `defaults`: window, stride, threshold and generation defaults, importable without torch.
"""
