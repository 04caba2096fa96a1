//! Reserved special tokens: fixed ids at the start of every vocabulary.
//!
//! Ids never move between tokenizers, so code can name them as constants and a
//! chat template or tool-call format added later needs no new tokens.

/// Special tokens in id order (id = index).
pub const SPECIAL_TOKENS: [&str; 16] = [
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_result|>",
    "<|/tool_result|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
    "<|reserved_2|>",
    "<|reserved_3|>",
    "<|reserved_4|>",
];

/// Begins every document; token shards put it before each document.
pub const BOS: u32 = 0;
/// Ends a generated sequence.
pub const EOS: u32 = 1;
/// Padding (never trained on).
pub const PAD: u32 = 2;
/// Starts a system message.
pub const SYSTEM: u32 = 3;
/// Starts a user message.
pub const USER: u32 = 4;
/// Starts an assistant message.
pub const ASSISTANT: u32 = 5;
/// Ends a message.
pub const END: u32 = 6;
/// Opens a tool call.
pub const TOOL_CALL: u32 = 7;
/// Closes a tool call.
pub const TOOL_CALL_END: u32 = 8;
/// Opens a tool result.
pub const TOOL_RESULT: u32 = 9;
/// Closes a tool result.
pub const TOOL_RESULT_END: u32 = 10;

/// Number of byte tokens every byte-level vocabulary holds.
pub const BYTE_TOKENS: usize = 256;
/// Smallest vocabulary that holds the special tokens and all bytes.
pub const MIN_VOCAB: usize = SPECIAL_TOKENS.len() + BYTE_TOKENS;
