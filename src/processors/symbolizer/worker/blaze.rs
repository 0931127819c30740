//! The blazesym adapter: one call per file (or the kernel), its answers turned into lines, innermost inlined function first, or a reason.

use super::*;

impl Worker {
    pub(super) fn lines_of(&self, sym: &blazesym::symbolize::Sym<'_>) -> Vec<ResolvedLine> {
        let code = |c: Option<&CodeInfo<'_>>| -> (String, i64, i64) {
            match c {
                Some(c) => (
                    c.to_path().to_string_lossy().into_owned(),
                    c.line.map_or(0, i64::from),
                    c.column.map_or(0, i64::from),
                ),
                None => (String::new(), 0, 0),
            }
        };
        let name = |raw: &str| {
            if self.cfg.demangle {
                demangle(raw)
            } else {
                raw.to_owned()
            }
        };
        let intern = |f: Func| -> Rc<Func> {
            let mut funcs = self.funcs.borrow_mut();
            // Bounded: entries still held by cached lines stay valid after a clear.
            if funcs.len() > self.cfg.cache_size {
                funcs.clear();
            }
            funcs.entry(f.clone()).or_insert_with(|| Rc::new(f)).clone()
        };
        let mut out = Vec::with_capacity(sym.inlined.len() + 1);
        for f in sym.inlined.iter().rev() {
            let (file, line, column) = code(f.code_info.as_ref());
            out.push(ResolvedLine {
                func: intern(Func::new(
                    name(&f.name),
                    f.name.to_string(),
                    file,
                    &self.hasher,
                )),
                line,
                column,
            });
        }
        let (file, line, column) = code(sym.code_info.as_deref());
        out.push(ResolvedLine {
            func: intern(Func::new(
                name(&sym.name),
                sym.name.to_string(),
                file,
                &self.hasher,
            )),
            line,
            column,
        });
        out
    }

    pub(super) fn convert(
        &self,
        r: Result<Vec<Symbolized<'_>>, blazesym::Error>,
        n: usize,
        source: &dyn std::fmt::Display,
    ) -> Vec<Resolved> {
        match r {
            Ok(v) => v
                .iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => Resolved::Lines(self.lines_of(sym)),
                    Symbolized::Unknown(reason) => Resolved::Unknown(reason_label(*reason)),
                })
                .collect(),
            Err(e) => {
                // Each frame is counted (reason `symbolizer_error`); the cause goes to
                // the log, whole, at debug level (a broken file fails every request
                // that names it).
                tracing::debug!(source = %source, frames = n, error = %crate::telemetry::chain(&e), "blazesym could not symbolize");
                vec![Resolved::Unknown("symbolizer_error"); n]
            }
        }
    }

    /// Symbolizes addresses of one ELF file (virtual addresses in that file), reading
    /// its DWARF as `dwarf` says.
    pub(super) fn symbolize_elf(
        &self,
        path: &std::path::Path,
        vaddrs: &[u64],
        dwarf: Dwarf,
    ) -> Vec<Resolved> {
        let mut elf = Elf::new(path);
        elf.debug_syms = dwarf != Dwarf::Off;
        let src = Source::Elf(elf);
        let sym = if dwarf == Dwarf::Trusted {
            &self.sym_trusted
        } else {
            &self.sym
        };
        self.convert(
            sym.symbolize(&src, Input::VirtOffset(vaddrs)),
            vaddrs.len(),
            &path.display(),
        )
    }

    /// Symbolizes kernel addresses.
    pub fn symbolize_kernel(&self, addrs: &[u64]) -> Vec<Resolved> {
        let k = Kernel {
            vmlinux: match &self.cfg.vmlinux {
                Some(p) => MaybeDefault::Some(p.clone()),
                None => MaybeDefault::None,
            },
            ..Default::default()
        };
        let src = Source::Kernel(k);
        self.convert(
            self.sym.symbolize(&src, Input::AbsAddr(addrs)),
            addrs.len(),
            &"the kernel",
        )
    }
}
