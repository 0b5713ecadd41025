//! An assembler for the bpf_conformance text syntax.
//!
//! One instruction per line, `#` starts a comment, `name:` defines a label. Registers are
//! `%r0`..`%r10`, memory operands `[%r1+0x2]` / `[%r10-8]` / `[%r1]`, numbers decimal or
//! `0x` hex with an optional sign. Jump targets are a label, a signed offset (`+1`, `-3`),
//! or `exit`, which (unless a label has that name) means the next `exit` instruction.
//!
//! Mnemonics: the ALU operations (`add`, `sub`, `mul`, `div`, `sdiv`, `mod`, `smod`, `or`,
//! `and`, `xor`, `lsh`, `rsh`, `arsh`, `mov`, `neg`, suffix `32` for the 32-bit class),
//! `movsx{8,16,32}{32,64}`, `be{16,32,64}`, `le{16,32,64}`, `bswap{16,32,64}` (alias
//! `swap*`), `ldx{b,h,w,dw}`, `ldxs{b,h,w}`, `st{b,h,w,dw}`, `stx{b,h,w,dw}`, `lddw`,
//! `ja`, `ja32`, `j{eq,ne,gt,ge,lt,le,sgt,sge,slt,sle,set}[32]`, `call <id>`,
//! `call %rN`, `call local <label>`, `exit`, and
//! `lock [fetch] {add,or,and,xor,xchg,cmpxchg}[32] [mem], %reg`.

use std::collections::HashMap;

use crate::insn::*;

/// Why a program text could not be assembled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {msg}")]
pub struct AsmError {
    /// 1-based line number in the text.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Reg(u8),
    Imm(i64),
    Mem(u8, i16),
    /// A label or the special `exit` target.
    Name(String),
}

/// A jump target not resolved yet.
enum Target {
    Off(i64),
    Name(String),
}

/// How a pending jump stores its offset.
#[derive(Clone, Copy)]
enum Field {
    Off,
    Imm,
}

struct Pending {
    slot: usize,
    target: Target,
    field: Field,
    line: usize,
}

/// Assembles a whole program.
pub fn assemble(text: &str) -> Result<Vec<Insn>, AsmError> {
    let mut out: Vec<Insn> = Vec::new();
    let mut labels: HashMap<String, usize> = HashMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |msg: String| AsmError { line, msg };
        let code = raw.split('#').next().unwrap_or("").trim();
        let code = code.split("//").next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        if let Some(name) = code.strip_suffix(':') {
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(err(format!("bad label {code:?}")));
            }
            if labels.insert(name.to_string(), out.len()).is_some() {
                return Err(err(format!("label {name:?} defined twice")));
            }
            continue;
        }
        let (mnemonic, rest) = match code.split_once(char::is_whitespace) {
            Some((m, r)) => (m.to_ascii_lowercase(), r.trim()),
            None => (code.to_ascii_lowercase(), ""),
        };
        let slot = out.len();
        match one(&mnemonic, rest, slot).map_err(err)? {
            Assembled::Insns(v) => out.extend(v),
            Assembled::Jump(insn, target, field) => {
                out.push(insn);
                pending.push(Pending {
                    slot,
                    target,
                    field,
                    line,
                });
            }
        }
    }
    for p in pending {
        let off = match p.target {
            Target::Off(o) => o,
            Target::Name(name) => {
                let to = match labels.get(&name) {
                    Some(&t) => t,
                    None if name == "exit" => (p.slot..out.len())
                        .find(|&k| out[k].op == op::EXIT)
                        .or_else(|| out.iter().rposition(|x| x.op == op::EXIT))
                        .ok_or(AsmError {
                            line: p.line,
                            msg: "jump to exit but the program has no exit".into(),
                        })?,
                    None => {
                        return Err(AsmError {
                            line: p.line,
                            msg: format!("unknown label {name:?}"),
                        });
                    }
                };
                to as i64 - p.slot as i64 - 1
            }
        };
        let insn = &mut out[p.slot];
        match p.field {
            Field::Off => {
                insn.off = i16::try_from(off).map_err(|_| AsmError {
                    line: p.line,
                    msg: format!("jump offset {off} does not fit 16 bits"),
                })?
            }
            Field::Imm => {
                insn.imm = i32::try_from(off).map_err(|_| AsmError {
                    line: p.line,
                    msg: format!("jump offset {off} does not fit 32 bits"),
                })?
            }
        }
    }
    Ok(out)
}

enum Assembled {
    Insns(Vec<Insn>),
    Jump(Insn, Target, Field),
}

fn parse_num(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let body = body.trim();
    let v: u64 = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        body.parse::<u64>().ok()?
    };
    let v = v as i64;
    Some(if neg { v.wrapping_neg() } else { v })
}

fn parse_reg(s: &str) -> Option<u8> {
    let n = s.trim().strip_prefix("%r")?;
    let r: u8 = n.parse().ok()?;
    (r < NUM_REGS && !n.starts_with('+')).then_some(r)
}

fn parse_operand(s: &str) -> Result<Operand, String> {
    let s = s.trim();
    if s.starts_with('%') {
        return parse_reg(s)
            .map(Operand::Reg)
            .ok_or_else(|| format!("bad register {s:?}"));
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("unterminated memory operand {s:?}"))?
            .trim();
        let split = inner.find(['+', '-']);
        let (reg, off) = match split {
            Some(k) => (&inner[..k], &inner[k..]),
            None => (inner, "0"),
        };
        let reg = parse_reg(reg).ok_or_else(|| format!("bad base register in {s:?}"))?;
        let off = parse_num(off).ok_or_else(|| format!("bad offset in {s:?}"))?;
        let off = i16::try_from(off).map_err(|_| format!("offset {off} does not fit 16 bits"))?;
        return Ok(Operand::Mem(reg, off));
    }
    if let Some(n) = parse_num(s) {
        return Ok(Operand::Imm(n));
    }
    let valid = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if valid {
        Ok(Operand::Name(s.to_string()))
    } else {
        Err(format!("bad operand {s:?}"))
    }
}

fn operands(rest: &str) -> Result<Vec<Operand>, String> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split(',').map(parse_operand).collect()
}

fn imm32(v: i64) -> Result<i32, String> {
    if v >= i32::MIN as i64 && v <= u32::MAX as i64 {
        Ok(v as i32)
    } else {
        Err(format!("immediate {v:#x} does not fit 32 bits"))
    }
}

fn want(ops: &[Operand], n: usize, m: &str) -> Result<(), String> {
    if ops.len() == n {
        Ok(())
    } else {
        Err(format!("{m} takes {n} operand(s), got {}", ops.len()))
    }
}

fn alu_op(name: &str) -> Option<(u8, i16)> {
    Some(match name {
        "add" => (BPF_ADD, 0),
        "sub" => (BPF_SUB, 0),
        "mul" => (BPF_MUL, 0),
        "div" => (BPF_DIV, 0),
        "sdiv" => (BPF_DIV, 1),
        "or" => (BPF_OR, 0),
        "and" => (BPF_AND, 0),
        "lsh" => (BPF_LSH, 0),
        "rsh" => (BPF_RSH, 0),
        "mod" => (BPF_MOD, 0),
        "smod" => (BPF_MOD, 1),
        "xor" => (BPF_XOR, 0),
        "mov" => (BPF_MOV, 0),
        "arsh" => (BPF_ARSH, 0),
        _ => return None,
    })
}

fn jmp_op(name: &str) -> Option<u8> {
    Some(match name {
        "jeq" => BPF_JEQ,
        "jgt" => BPF_JGT,
        "jge" => BPF_JGE,
        "jset" => BPF_JSET,
        "jne" => BPF_JNE,
        "jsgt" => BPF_JSGT,
        "jsge" => BPF_JSGE,
        "jlt" => BPF_JLT,
        "jle" => BPF_JLE,
        "jslt" => BPF_JSLT,
        "jsle" => BPF_JSLE,
        _ => return None,
    })
}

fn size_of_suffix(s: &str) -> Option<u8> {
    Some(match s {
        "b" => BPF_B,
        "h" => BPF_H,
        "w" => BPF_W,
        "dw" => BPF_DW,
        _ => return None,
    })
}

/// Splits a trailing `32`/`64` width suffix: `("add", true)` for `add32`.
fn width(m: &str) -> (&str, bool) {
    if let Some(b) = m.strip_suffix("32") {
        (b, true)
    } else if let Some(b) = m.strip_suffix("64") {
        (b, false)
    } else {
        (m, false)
    }
}

fn target(op: &Operand) -> Result<Target, String> {
    match op {
        Operand::Imm(n) => Ok(Target::Off(*n)),
        Operand::Name(n) => Ok(Target::Name(n.clone())),
        other => Err(format!("bad jump target {other:?}")),
    }
}

fn one(m: &str, rest: &str, _slot: usize) -> Result<Assembled, String> {
    use Assembled::Insns;
    let single = |i: Insn| Ok(Insns(vec![i]));
    if m == "lock" {
        return lock(rest).map(|i| Insns(vec![i]));
    }
    if m == "call" {
        let rest = rest.trim();
        if let Some(label) = rest.strip_prefix("local") {
            let t = target(&parse_operand(label)?)?;
            return Ok(Assembled::Jump(
                Insn::new(op::CALL, 0, PSEUDO_CALL, 0, 0),
                t,
                Field::Imm,
            ));
        }
        return match parse_operand(rest)? {
            Operand::Imm(n) => single(Insn::new(op::CALL, 0, 0, 0, imm32(n)?)),
            Operand::Reg(r) => single(Insn::new(op::CALLX, r, 0, 0, 0)),
            other => Err(format!("bad call operand {other:?}")),
        };
    }
    let ops = operands(rest)?;
    if m == "exit" {
        want(&ops, 0, m)?;
        return single(Insn::new(op::EXIT, 0, 0, 0, 0));
    }
    if m == "ja" || m == "ja32" {
        want(&ops, 1, m)?;
        let (insn, field) = if m == "ja" {
            (Insn::new(op::JA, 0, 0, 0, 0), Field::Off)
        } else {
            (Insn::new(op::JA32, 0, 0, 0, 0), Field::Imm)
        };
        return Ok(Assembled::Jump(insn, target(&ops[0])?, field));
    }
    if m == "lddw" {
        want(&ops, 2, m)?;
        let (Operand::Reg(d), Operand::Imm(v)) = (&ops[0], &ops[1]) else {
            return Err("lddw takes a register and an immediate".into());
        };
        let v = *v as u64;
        return Ok(Insns(vec![
            Insn::new(op::LDDW, *d, 0, 0, v as u32 as i32),
            Insn::new(0, 0, 0, 0, (v >> 32) as u32 as i32),
        ]));
    }
    if let Some(rest) = m.strip_prefix("movsx") {
        want(&ops, 2, m)?;
        let (from, class) = match rest {
            "832" => (8, BPF_ALU),
            "1632" => (16, BPF_ALU),
            "864" => (8, BPF_ALU64),
            "1664" => (16, BPF_ALU64),
            "3264" => (32, BPF_ALU64),
            _ => return Err(format!("unknown mnemonic {m:?}")),
        };
        let (Operand::Reg(d), Operand::Reg(s)) = (&ops[0], &ops[1]) else {
            return Err(format!("{m} takes two registers"));
        };
        return single(Insn::new(class | BPF_MOV | BPF_X, *d, *s, from, 0));
    }
    for (prefix, class, end) in [
        ("be", BPF_ALU, BPF_TO_BE),
        ("le", BPF_ALU, BPF_TO_LE),
        ("bswap", BPF_ALU64, BPF_TO_LE),
        ("swap", BPF_ALU64, BPF_TO_LE),
    ] {
        if let Some(bits) = m.strip_prefix(prefix)
            && let Ok(bits @ (16 | 32 | 64)) = bits.parse::<i32>()
        {
            want(&ops, 1, m)?;
            let Operand::Reg(d) = ops[0] else {
                return Err(format!("{m} takes a register"));
            };
            return single(Insn::new(class | BPF_END | end, d, 0, 0, bits));
        }
    }
    if let Some(sz) = m.strip_prefix("ldxs").and_then(size_of_suffix) {
        return load(&ops, m, BPF_LDX | BPF_MEMSX | sz);
    }
    if let Some(sz) = m.strip_prefix("ldx").and_then(size_of_suffix) {
        return load(&ops, m, BPF_LDX | BPF_MEM | sz);
    }
    if let Some(sz) = m.strip_prefix("stx").and_then(size_of_suffix) {
        want(&ops, 2, m)?;
        let (Operand::Mem(d, off), Operand::Reg(s)) = (&ops[0], &ops[1]) else {
            return Err(format!("{m} takes a memory operand and a register"));
        };
        return single(Insn::new(BPF_STX | BPF_MEM | sz, *d, *s, *off, 0));
    }
    if let Some(sz) = m.strip_prefix("st").and_then(size_of_suffix) {
        want(&ops, 2, m)?;
        let (Operand::Mem(d, off), Operand::Imm(v)) = (&ops[0], &ops[1]) else {
            return Err(format!("{m} takes a memory operand and an immediate"));
        };
        return single(Insn::new(BPF_ST | BPF_MEM | sz, *d, 0, *off, imm32(*v)?));
    }
    let (base, is32) = width(m);
    if base == "neg" {
        want(&ops, 1, m)?;
        let Operand::Reg(d) = ops[0] else {
            return Err("neg takes a register".into());
        };
        let class = if is32 { BPF_ALU } else { BPF_ALU64 };
        return single(Insn::new(class | BPF_NEG, d, 0, 0, 0));
    }
    if let Some((code, off)) = alu_op(base) {
        want(&ops, 2, m)?;
        let Operand::Reg(d) = ops[0] else {
            return Err(format!("{m} needs a destination register"));
        };
        let class = if is32 { BPF_ALU } else { BPF_ALU64 };
        return match &ops[1] {
            Operand::Reg(s) => single(Insn::new(class | code | BPF_X, d, *s, off, 0)),
            Operand::Imm(v) => single(Insn::new(class | code | BPF_K, d, 0, off, imm32(*v)?)),
            other => Err(format!("bad source operand {other:?}")),
        };
    }
    if let Some(code) = jmp_op(base) {
        want(&ops, 3, m)?;
        let Operand::Reg(d) = ops[0] else {
            return Err(format!("{m} needs a register to compare"));
        };
        let class = if is32 { BPF_JMP32 } else { BPF_JMP };
        let insn = match &ops[1] {
            Operand::Reg(s) => Insn::new(class | code | BPF_X, d, *s, 0, 0),
            Operand::Imm(v) => Insn::new(class | code | BPF_K, d, 0, 0, imm32(*v)?),
            other => return Err(format!("bad comparison operand {other:?}")),
        };
        return Ok(Assembled::Jump(insn, target(&ops[2])?, Field::Off));
    }
    Err(format!("unknown mnemonic {m:?}"))
}

fn load(ops: &[Operand], m: &str, opcode: u8) -> Result<Assembled, String> {
    want(ops, 2, m)?;
    let (Operand::Reg(d), Operand::Mem(s, off)) = (&ops[0], &ops[1]) else {
        return Err(format!("{m} takes a register and a memory operand"));
    };
    Ok(Assembled::Insns(vec![Insn::new(opcode, *d, *s, *off, 0)]))
}

fn lock(rest: &str) -> Result<Insn, String> {
    let rest = rest.trim();
    let (fetch, rest) = match rest.strip_prefix("fetch") {
        Some(r) if r.starts_with(char::is_whitespace) => (true, r.trim()),
        _ => (false, rest),
    };
    let (m, ops) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| "lock needs an operation and operands".to_string())?;
    let (base, is32) = width(m);
    let mut imm = match base {
        "add" => ATOMIC_ADD,
        "or" => ATOMIC_OR,
        "and" => ATOMIC_AND,
        "xor" => ATOMIC_XOR,
        "xchg" => ATOMIC_XCHG,
        "cmpxchg" => ATOMIC_CMPXCHG,
        _ => return Err(format!("unknown atomic operation {m:?}")),
    };
    if fetch {
        imm |= ATOMIC_FETCH;
    }
    let ops = operands(ops.trim())?;
    want(&ops, 2, "lock")?;
    let (Operand::Mem(d, off), Operand::Reg(s)) = (&ops[0], &ops[1]) else {
        return Err("lock takes a memory operand and a register".into());
    };
    let sz = if is32 { BPF_W } else { BPF_DW };
    Ok(Insn::new(BPF_STX | BPF_ATOMIC | sz, *d, *s, *off, imm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_forms() {
        let p = assemble(
            "mov %r0, -1\nldxb %r0, [%r1+0x2]\nlock fetch add32 [%r10-8], %r1\nstdw [%r10-16], 0xab\nexit",
        )
        .unwrap();
        assert_eq!(p[0], Insn::new(0xb7, 0, 0, 0, -1));
        assert_eq!(p[1], Insn::new(0x71, 0, 1, 2, 0));
        assert_eq!(p[2], Insn::new(0xc3, 10, 1, -8, 1));
        assert_eq!(p[3], Insn::new(0x7a, 10, 0, -16, 0xab));
        assert_eq!(p[4], Insn::new(0x95, 0, 0, 0, 0));
    }

    #[test]
    fn labels_and_exit_target() {
        let p = assemble("jeq %r1, 1, exit # c\nja l\nl:\nmov32 %r0, 0x87654321\nexit").unwrap();
        assert_eq!(p[0].off, 2);
        assert_eq!(p[1].off, 0);
        assert_eq!(p[2].imm, 0x87654321u32 as i32);
    }

    #[test]
    fn lddw_two_slots() {
        let p = assemble("lddw %r0, 0x1122334455667788\nexit").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].imm as u32, 0x55667788);
        assert_eq!(p[1].imm as u32, 0x11223344);
    }

    #[test]
    fn errors_name_the_line() {
        let e = assemble("mov %r0, 1\nfrob %r1\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(assemble("mov %r11, 1").is_err());
        assert!(assemble("ja nowhere\nexit").is_err());
    }
}
