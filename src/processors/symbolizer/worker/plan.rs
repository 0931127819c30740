//! Planning a request: which locations need which file, what the cache already answers, and what is left to symbolize.

use super::*;

/// What every location of one mapping shares.
#[derive(Debug, Clone)]
pub(super) enum Plan {
    Kernel,
    File {
        id: u32,
        file: Rc<ElfFile>,
        dwarf: Dwarf,
        memory_start: u64,
        memory_limit: u64,
        file_offset: u64,
    },
    Skip(&'static str),
}

impl Worker {
    /// How the locations of one mapping are symbolized, worked out once per request.
    pub(super) fn plan(
        &mut self,
        dict: &ProfilesDictionary,
        mapping_index: i32,
        pids: &HashMap<usize, u32>,
    ) -> Plan {
        let Some(m) = dict
            .mapping_table
            .get(mapping_index as usize)
            .filter(|_| mapping_index > 0)
        else {
            return Plan::Skip("no_mapping");
        };
        let filename = dict
            .string_table
            .get(m.filename_strindex as usize)
            .map_or("", String::as_str);
        // Kernel text and modules live in the upper half of the address space.
        if filename == "[kernel.kallsyms]" || m.memory_start >= 0xffff_8000_0000_0000 {
            return if self.cfg.kernel_on() {
                Plan::Kernel
            } else {
                Plan::Skip("kernel_disabled")
            };
        }
        let build_id = match Dict(dict).build_id(m) {
            None => None,
            Some(Ok(id)) => Some(id),
            // The receiver's checks refuse these; a request from elsewhere is not trusted either.
            Some(Err(_)) => return Plan::Skip("invalid_build_id"),
        };
        let pid = pids.get(&(mapping_index as usize)).copied();
        if pid == Some(std::process::id())
            && self.cfg.uses(SymbolSource::Host)
            && !self.cfg.symbolize_self
        {
            return Plan::Skip("own_process");
        }
        match self.choose_file(
            build_id.as_ref(),
            pid,
            filename,
            m.memory_start,
            m.memory_limit,
        ) {
            FileChoice::Found { id, file, dwarf } => Plan::File {
                id,
                file,
                dwarf,
                memory_start: m.memory_start,
                memory_limit: m.memory_limit,
                file_offset: m.file_offset,
            },
            FileChoice::Missing(reason) => Plan::Skip(reason),
        }
    }
}
