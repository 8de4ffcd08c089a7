//! JMESPath templates, bounded in CPU and memory.
//!
//! JMESPath has no loops, but its values share structure: `{a:@,b:@}` holds its input twice
//! without copying it, so forty of them piped together are a 4 KiB expression whose result is
//! 2^40 times the event once serialised, and projections over such a value take as long.
//! A template is therefore checked before it runs:
//!
//! - at most [`MAX_TEMPLATE_LEN`] characters and [`MAX_DEPTH`] levels of nesting;
//! - a static bound on the size of every value it can build, in multiples of its input
//!   ([`growth`]): a pipe multiplies, a multi-select adds, a projection applies its right side
//!   to the whole of its left side. At most [`MAX_GROWTH`] on save; when it runs, the bound
//!   times the event's size must stay under [`MAX_WORK_BYTES`];
//! - its output is serialised into a writer that stops at [`MAX_RENDERED_BYTES`];
//! - it runs on a thread of its own (a large stack for the parser, off the async executor),
//!   at most [`MAX_CONCURRENT`] at once per process, and is abandoned after [`DEADLINE`].
//!
//! A template that fails any of these fails its own delivery (`error_class: template`), never
//! the batch it is in.

use std::sync::mpsc;
use std::time::Duration;

use jmespath::ast::Ast;

/// Longest accepted template expression.
pub const MAX_TEMPLATE_LEN: usize = 4096;
/// Deepest nesting of a template's syntax tree.
pub const MAX_DEPTH: usize = 32;
/// The most a template may multiply the size of its input, by the static bound.
pub const MAX_GROWTH: f64 = 256.0;
/// The most any value built while rendering one event may reach, by the static bound.
pub const MAX_WORK_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
/// Largest body a template may produce.
pub const MAX_RENDERED_BYTES: usize = 256 * 1024;
/// How long one rendering may take.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Templates rendered at once in one process (the rest wait their turn).
pub const MAX_CONCURRENT: usize = 2;
/// Stack of the thread a template is parsed and run on.
const STACK_BYTES: usize = 16 * 1024 * 1024;

/// Checks an expression without input: its length, that it parses, its depth and its growth.
/// Returns it compiled, with its growth bound.
fn check_expression(expression: &str) -> Result<(jmespath::Expression<'static>, f64), String> {
    if expression.len() > MAX_TEMPLATE_LEN {
        return Err(format!(
            "the template is {} characters; at most {MAX_TEMPLATE_LEN}",
            expression.len()
        ));
    }
    let compiled =
        jmespath::compile(expression).map_err(|e| format!("not a JMESPath expression: {e}"))?;
    let bound = growth(compiled.as_ast());
    if bound > MAX_GROWTH {
        return Err(format!(
            "the template can build values up to {} times the size of the event (it copies \
             its input into itself too often); at most {MAX_GROWTH}",
            human(bound)
        ));
    }
    let depth = depth(compiled.as_ast());
    if depth > MAX_DEPTH {
        return Err(format!(
            "the template nests {depth} levels deep; at most {MAX_DEPTH}"
        ));
    }
    Ok((compiled, bound))
}

fn human(n: f64) -> String {
    if n >= 1e6 {
        format!("{n:.1e}")
    } else {
        format!("{n:.0}")
    }
}

/// Renders `input` (the envelope, as JSON) through `expression`: a JSON object of at most
/// [`MAX_RENDERED_BYTES`], or why not. Synchronous and unbounded in time: call it through
/// [`render_bounded`] or [`render_blocking`].
fn render(expression: &str, input: &[u8]) -> Result<Vec<u8>, String> {
    let (compiled, bound) = check_expression(expression)?;
    let work = bound * input.len() as f64;
    if work > MAX_WORK_BYTES {
        return Err(format!(
            "on this {} byte event the template could build values of {} MB; at most {} MB",
            input.len(),
            human(work / 1e6),
            MAX_WORK_BYTES / (1024.0 * 1024.0)
        ));
    }
    let data =
        jmespath::Variable::from_json(std::str::from_utf8(input).map_err(|e| e.to_string())?)
            .map_err(|e| format!("envelope: {e}"))?;
    let result = compiled
        .search(data)
        .map_err(|e| format!("template: {e}"))?;
    if !result.is_object() {
        let mut start = Limited::new(80);
        let _ = serde_json::to_writer(&mut start, &*result);
        return Err(format!(
            "the template must produce a JSON object, not `{}`",
            String::from_utf8_lossy(&start.out)
        ));
    }
    let mut body = Limited::new(MAX_RENDERED_BYTES);
    match serde_json::to_writer(&mut body, &*result) {
        Ok(()) => Ok(body.out),
        Err(_) if body.full => Err(format!(
            "the template produced more than {MAX_RENDERED_BYTES} bytes; at most {MAX_RENDERED_BYTES} are sent"
        )),
        Err(e) => Err(format!("template: {e}")),
    }
}

/// A writer that refuses to grow past its limit (so a value that shares structure is never
/// serialised whole).
struct Limited {
    out: Vec<u8>,
    limit: usize,
    full: bool,
}

impl Limited {
    fn new(limit: usize) -> Self {
        Self {
            out: Vec::new(),
            limit,
            full: false,
        }
    }
}

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.limit - self.out.len();
        if buf.len() > room {
            self.out.extend_from_slice(&buf[..room]);
            self.full = true;
            return Err(std::io::Error::other("limit reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `work` on a thread of its own with a large stack; `done` gets its result there.
fn spawn<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    done: impl FnOnce(T) + Send + 'static,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("template".into())
        .stack_size(STACK_BYTES)
        .spawn(move || done(work()))
        .map(|_| ())
        .map_err(|e| format!("template: no thread to run it on: {e}"))
}

fn too_slow() -> String {
    format!(
        "the template took longer than {} s on this event",
        DEADLINE.as_secs()
    )
}

static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT);

/// [`render`] for the async delivery path: on a thread of its own, a few at a time, given up
/// after [`DEADLINE`] (the thread then ends on its own; what it can build is bounded).
pub async fn render_bounded(expression: &str, input: Vec<u8>) -> Result<Vec<u8>, String> {
    let _slot = SLOTS
        .acquire()
        .await
        .map_err(|_| "template: no slot".to_owned())?;
    let expression = expression.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn(
        move || render(&expression, &input),
        move |r| {
            let _ = tx.send(r);
        },
    )?;
    match tokio::time::timeout(DEADLINE, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the template could not be run".into()),
        Err(_) => Err(too_slow()),
    }
}

/// Runs `work` on a template thread and waits for it, at most [`DEADLINE`], from a
/// synchronous caller.
fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::sync_channel(1);
    spawn(work, move |r| {
        let _ = tx.send(r);
    })?;
    match rx.recv_timeout(DEADLINE) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(too_slow()),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the template could not be run".into()),
    }
}

/// [`render`] for a synchronous caller (the save-time check): on a thread of its own, given
/// up after [`DEADLINE`].
pub fn render_blocking(expression: &str, input: Vec<u8>) -> Result<Vec<u8>, String> {
    let expression = expression.to_owned();
    run_blocking(move || render(&expression, &input))
}

/// [`check_expression`] on a thread of its own (parsing a deeply nested expression needs a
/// large stack): the growth bound.
#[cfg(test)]
fn check_blocking(expression: &str) -> Result<f64, String> {
    let expression = expression.to_owned();
    run_blocking(move || check_expression(&expression).map(|(_, bound)| bound))
}

/// Nesting depth of a syntax tree.
fn depth(ast: &Ast) -> usize {
    1 + children(ast).into_iter().map(depth).max().unwrap_or(0)
}

fn children(ast: &Ast) -> Vec<&Ast> {
    match ast {
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => vec![lhs, rhs],
        Ast::Condition {
            predicate, then, ..
        } => vec![predicate, then],
        Ast::Expref { ast, .. } => vec![ast],
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
            vec![node]
        }
        Ast::Function { args, .. } => args.iter().collect(),
        Ast::MultiList { elements, .. } => elements.iter().collect(),
        Ast::MultiHash { elements, .. } => elements.iter().map(|kv| &kv.value).collect(),
        Ast::Identity { .. }
        | Ast::Field { .. }
        | Ast::Index { .. }
        | Ast::Literal { .. }
        | Ast::Slice { .. } => Vec::new(),
    }
}

/// An upper bound on the size of any value the expression builds, as a multiple of its
/// input's size (constants count as one input).
pub fn growth(ast: &Ast) -> f64 {
    let mut worst = 1.0;
    let out = size(ast, 1.0, &mut worst);
    worst.max(out)
}

/// The size of `ast`'s result on an input of size `input`; `worst` keeps the largest value
/// seen anywhere (intermediate results count: they are built too).
fn size(ast: &Ast, input: f64, worst: &mut f64) -> f64 {
    let out = match ast {
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Slice { .. } => input,
        Ast::Literal { .. } => 1.0,
        Ast::Comparison { lhs, rhs, .. } => {
            size(lhs, input, worst);
            size(rhs, input, worst);
            1.0
        }
        Ast::Not { node, .. } => {
            size(node, input, worst);
            1.0
        }
        Ast::And { lhs, rhs, .. } | Ast::Or { lhs, rhs, .. } => {
            size(lhs, input, worst).max(size(rhs, input, worst))
        }
        Ast::Condition {
            predicate, then, ..
        } => {
            size(predicate, input, worst);
            size(then, input, worst)
        }
        Ast::Flatten { node, .. } | Ast::ObjectValues { node, .. } => size(node, input, worst),
        Ast::Expref { ast, .. } => size(ast, input, worst),
        // Each element applies to the same input: the sizes add up.
        Ast::MultiList { elements, .. } => elements.iter().map(|e| size(e, input, worst)).sum(),
        Ast::MultiHash { elements, .. } => elements
            .iter()
            .map(|kv| size(&kv.value, input, worst))
            .sum(),
        // The right side runs on the left side's result; a projection's right side runs on
        // each element of it, whose sizes add up to the left side's.
        Ast::Subexpr { lhs, rhs, .. } | Ast::Projection { lhs, rhs, .. } => {
            let left = size(lhs, input, worst);
            size(rhs, left, worst)
        }
        Ast::Function { name, args, .. } => function_size(name, args, input, worst),
    };
    if out > *worst {
        *worst = out;
    }
    out
}

/// Functions: an expression argument (`&expr`) runs on each element of the array argument;
/// `map` returns its results, the others return (parts of) their arguments or a scalar.
fn function_size(name: &str, args: &[Ast], input: f64, worst: &mut f64) -> f64 {
    let values: Vec<f64> = args
        .iter()
        .filter(|a| !matches!(a, Ast::Expref { .. }))
        .map(|a| size(a, input, worst))
        .collect();
    let array = values.iter().copied().fold(0.0, f64::max);
    let mut mapped = 0.0;
    for arg in args {
        if let Ast::Expref { ast, .. } = arg {
            mapped = f64::max(mapped, size(ast, array, worst));
        }
    }
    match name {
        "map" => mapped,
        "abs" | "avg" | "ceil" | "contains" | "ends_with" | "floor" | "length" | "starts_with"
        | "sum" | "to_number" | "type" => 1.0,
        _ => values.iter().sum::<f64>().max(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doubling(levels: usize) -> String {
        vec!["{a:@,b:@}"; levels].join(" | ")
    }

    #[test]
    fn growth_bounds_what_templates_build() {
        let g = |e: &str| growth(jmespath::compile(e).unwrap().as_ast());
        assert_eq!(g("data.order_id"), 1.0);
        assert_eq!(g("{text: join('', ['New order ', data.order_id])}"), 3.0);
        assert_eq!(g(&doubling(3)), 8.0);
        assert!(g(&doubling(40)) > 1e12);
        assert_eq!(g("[@, @] | [*].[@, @, @]"), 6.0);
        assert_eq!(g("map(&[@, @], data.items)"), 2.0);
        assert!(g("length(to_string({a:@,b:@} | {a:@,b:@}))") >= 4.0);
    }

    #[test]
    fn exploding_and_deep_templates_are_refused_without_running() {
        let started = std::time::Instant::now();
        let err =
            check_blocking(&format!("data.boom && ({}) || {{t: 'ok'}}", doubling(40))).unwrap_err();
        assert!(err.contains("times the size of the event"), "{err}");
        let deep = format!("{}a{}", "[".repeat(200), "]".repeat(200));
        assert!(check_blocking(&deep).unwrap_err().contains("levels deep"));
        let nots = format!("{}a", "!".repeat(3000));
        assert!(check_blocking(&nots).is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn output_is_cut_off_while_it_is_written() {
        let input = format!(r#"{{"data":{{"s":"{}"}}}}"#, "x".repeat(40_000));
        let err = render_blocking(
            "{a: data.s, b: data.s, c: data.s, d: data.s, e: data.s, f: data.s, g: data.s}",
            input.into_bytes(),
        )
        .unwrap_err();
        assert!(err.contains("more than 262144 bytes"), "{err}");
    }

    #[test]
    fn a_large_event_lowers_what_a_template_may_do() {
        let input = format!(r#"{{"data":{{"s":"{}"}}}}"#, "x".repeat(200_000));
        let err = render_blocking(&doubling(7), input.into_bytes()).unwrap_err();
        assert!(err.contains("could build values"), "{err}");
    }

    #[tokio::test]
    async fn the_async_path_renders_objects_only() {
        let input = br#"{"data":{"n":1}}"#.to_vec();
        assert_eq!(
            render_bounded("{n: data.n}", input.clone()).await.unwrap(),
            br#"{"n":1}"#
        );
        assert!(render_bounded("data.n", input)
            .await
            .unwrap_err()
            .contains("JSON object"));
    }
}
