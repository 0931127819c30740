//! Attribute names Stackline writes and reads, spelled once: OpenTelemetry semantic
//! conventions where they exist, `stackline.*` for what is ours.

pub const PROCESS_PID: &str = "process.pid";
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
pub const PROCESS_EXECUTABLE_PATH: &str = "process.executable.path";
pub const PROCESS_EXECUTABLE_BUILD_ID_GNU: &str = "process.executable.build_id.gnu";
pub const THREAD_ID: &str = "thread.id";
pub const THREAD_NAME: &str = "thread.name";
pub const CONTAINER_ID: &str = "container.id";
pub const K8S_POD_UID: &str = "k8s.pod.uid";
pub const HOST_NAME: &str = "host.name";
/// `native` or `kernel` on a location.
pub const PROFILE_FRAME_TYPE: &str = "profile.frame.type";
pub const FRAME_TYPE_NATIVE: &str = "native";
pub const FRAME_TYPE_KERNEL: &str = "kernel";
/// How a frame was found (`frame_pointer` where tables were missing).
pub const STACKLINE_UNWIND_METHOD: &str = "stackline.unwind.method";
/// On a profile: the fraction of report intervals probabilistic profiling samples (only
/// when below 1), so that a backend can scale totals by its inverse.
pub const STACKLINE_PROBABILISTIC_FRACTION: &str = "stackline.probabilistic.fraction";
/// Why a stack walk ended.
pub const STACKLINE_UNWIND_STOP: &str = "stackline.unwind.stop";
