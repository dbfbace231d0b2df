//! Reading the Prometheus text exposition served at `/metrics`.

/// The text of one `/metrics` response.
pub struct Metrics {
    text: String,
}

/// One sample line: `name{labels} value`.
struct Sample<'a> {
    name: &'a str,
    labels: &'a str,
    value: f64,
}

impl Metrics {
    pub fn new(text: &str) -> Metrics {
        Metrics {
            text: text.to_string(),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// True if at least one sample of `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples().any(|sample| sample.name == name)
    }

    /// The sum of every sample of `name`; 0 when there is none.
    pub fn sum(&self, name: &str) -> f64 {
        self.sum_with(name, "")
    }

    /// The sum of the samples of `name` whose labels include `label`
    /// (written as in the exposition, e.g. `reason="not_found"`).
    pub fn sum_with(&self, name: &str, label: &str) -> f64 {
        let matching = self
            .samples()
            .filter(|s| s.name == name && s.labels.contains(label));
        matching.map(|sample| sample.value).sum()
    }

    fn samples(&self) -> impl Iterator<Item = Sample<'_>> {
        let lines = self.text.lines().map(str::trim);
        lines
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(parse_sample)
    }
}

fn parse_sample(line: &str) -> Sample<'_> {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("bad sample {line:?}"));
    let name = &line[..name_end];
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(after) => after
            .split_once('}')
            .unwrap_or_else(|| panic!("bad sample {line:?}")),
        None => ("", &line[name_end..]),
    };
    let value = rest.split_whitespace().next().unwrap_or_default();
    let value = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value in {line:?}"));
    Sample {
        name,
        labels,
        value,
    }
}
