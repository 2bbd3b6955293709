//! The Markdown table the bench prints.

pub(crate) struct Table {
    pub(crate) rows: Vec<[String; 6]>,
}

impl Table {
    /// One row of figures, already formatted.
    pub(crate) fn row(
        &mut self,
        what: &str,
        origin: String,
        reg: String,
        oci: String,
        ratio: String,
        target: &str,
    ) {
        self.rows
            .push([what.into(), origin, reg, oci, ratio, target.into()]);
    }

    pub(crate) fn print(&self) {
        let header = [
            "measure",
            "origin direct",
            "registry:2 proxy",
            "oci-cache",
            "ratio",
            "target",
        ];
        println!("| {} |", header.join(" | "));
        println!("|{}|", header.map(|_| "---").join("|"));
        for r in &self.rows {
            println!("| {} |", r.join(" | "));
        }
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}
