//! The interval's profile as an OTLP request.

use super::*;

impl IntervalProfile {
    /// The interval's request: one profile of `samples/count` sampled on `cpu/nanoseconds`.
    pub fn finish(mut self, end_unix_ns: u64, host: &str) -> ProfilesRequest {
        let sample_type = ValueType {
            type_strindex: self.b.intern_string("samples"),
            unit_strindex: self.b.intern_string("count"),
        };
        let period_type = ValueType {
            type_strindex: self.b.intern_string("cpu"),
            unit_strindex: self.b.intern_string("nanoseconds"),
        };
        let resource = Resource {
            attributes: vec![KeyValue {
                key: semconv::HOST_NAME.into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(host.to_owned())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "stackline.ebpf_profiler".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let start = self.start_unix_ns.min(self.first_ts);
        // The range is half-open: it must end after the last sample.
        let end = end_unix_ns.max(self.last_ts.saturating_add(1));
        let attribute_indices = match self.sampling_fraction {
            Some(f) => {
                let key_strindex = self
                    .b
                    .intern_string(semconv::STACKLINE_PROBABILISTIC_FRACTION);
                vec![self.b.intern_attribute(KeyValueAndUnit {
                    key_strindex,
                    value: Some(AnyValue {
                        value: Some(any_value::Value::DoubleValue(f)),
                    }),
                    unit_strindex: 0,
                })]
            }
            None => Vec::new(),
        };
        let profile = Profile {
            attribute_indices,
            sample_type: Some(sample_type),
            samples: std::mem::take(&mut self.samples),
            time_unix_nano: start,
            duration_nano: end - start,
            period_type: Some(period_type),
            period: self.period_ns,
            ..Default::default()
        };
        self.b.push_profile(Some(resource), Some(scope), profile);
        self.b.finish()
    }
}
