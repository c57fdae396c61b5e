//! Resolves an image's layers into a [`BuildPlan`]: dependency order, template variables, rendered
//! package lists and one content-addressed cache key per layer. Pure data: `outpost plan` prints
//! it and nothing is built.

pub mod key;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::spec::{Image, Keyring, Layer, Problems, SpecError};


/// Where the base layer's packages come from.
#[derive(Debug, Clone, Serialize)]
pub struct Base {
    pub distro: String,
    pub suite: String,
    /// None: the host's apt sources when they serve this suite, else mmdebstrap's default.
    pub mirror: Option<String>,
    pub components: String,
    pub architecture: String,
    #[serde(skip)]
    pub keyring: Option<Keyring>,
}

impl Base {
    /// The archive's name in the package pool: one name means one file within it.
    pub fn archive(&self) -> String {
        format!("{}-{}-{}", self.distro, self.suite, self.architecture)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedLayer {
    pub name: String,
    pub key: String,
    #[serde(skip)]
    pub layer: Layer,
    /// Package names with their templates rendered.
    pub packages: Vec<String>,
    /// The variables this layer's templates see, resolved.
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildPlan {
    pub image: String,
    #[serde(skip)]
    pub spec: Image,
    pub base: Base,
    pub layers: Vec<PlannedLayer>,
}

impl BuildPlan {
    /// The cache key of the whole root filesystem: the top layer's.
    pub fn top_key(&self) -> &str {
        self.layers.last().map(|l| l.key.as_str()).unwrap_or("")
    }

    /// Template context for one layer's files.
    pub fn context(&self, layer: &PlannedLayer) -> tera::Context {
        context(&layer.variables)
    }
}

fn context(vars: &BTreeMap<String, String>) -> tera::Context {
    let mut ctx = tera::Context::new();
    for (k, v) in vars {
        ctx.insert(k, v);
    }
    ctx
}

/// Renders a template string; the error names what was being rendered.
pub fn render(name: &str, text: &str, ctx: &tera::Context) -> Result<String, String> {
    tera::Tera::one_off(text, ctx, false).map_err(|e| {
        let mut msg = String::new();
        let mut cur: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = cur {
            let s = err.to_string();
            if !msg.contains(&s) {
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&s);
            }
            cur = err.source();
        }
        msg.replace("'__tera_one_off'", &format!("`{name}`"))
    })
}

/// Loads every layer the image needs, orders them and computes their keys; all problems in all
/// definitions are reported together.
pub fn resolve(image: &Image) -> Result<BuildPlan, SpecError> {
    let mut p = Problems::default();
    let dir = image.layers_dir();
    let mut loaded: BTreeMap<String, Layer> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut visiting: Vec<String> = Vec::new();
    for (i, name) in image.layers.iter().enumerate() {
        visit(name, &image.file, &format!("layers[{i}]"), &dir, image, &mut loaded, &mut order, &mut visiting, &mut p);
    }
    if !p.0.is_empty() {
        return Err(SpecError(p.0));
    }

    // Variables: layer defaults in order, then the image's values.
    let declared: BTreeSet<&String> = order.iter().flat_map(|n| loaded[n].variables.keys()).collect();
    for k in image.variables.keys() {
        if !declared.contains(k) {
            p.push(&image.file, &format!("variables.{k}"), "no layer of this image declares this variable");
        }
    }
    let builtins = BTreeMap::from([
        ("distro".to_string(), image.distro.name().to_string()),
        ("suite".to_string(), image.suite.clone()),
        ("architecture".to_string(), image.architecture.clone()),
    ]);
    let mut resolved: BTreeMap<String, String> = BTreeMap::new();
    for n in &order {
        for (k, v) in &loaded[n].variables {
            resolved.insert(k.clone(), image.variables.get(k).unwrap_or(v).clone());
        }
    }

    let keyring = loaded[&order[0]].keyring.clone();
    let base = Base {
        distro: image.distro.name().into(),
        suite: image.suite.clone(),
        mirror: image.mirror.clone(),
        components: image.distro.components().into(),
        architecture: image.architecture.clone(),
        keyring,
    };
    for n in order.iter().skip(1) {
        if loaded[n].keyring.is_some() {
            p.push(&loaded[n].file, "keyring", format!("only the bottom layer (`{}`) bootstraps from an archive; a keyring here is never used", order[0]));
        }
    }

    let mut layers = Vec::new();
    let mut parent = key::base_key(&base).map_err(|e| SpecError(vec![crate::spec::Problem { file: image.file.clone(), key: String::new(), message: e }]))?;
    for n in &order {
        let layer = loaded[n].clone();
        let mut vars = builtins.clone();
        for dep in closure(n, &loaded) {
            for k in loaded[&dep].variables.keys() {
                vars.insert(k.clone(), resolved[k].clone());
            }
        }
        let ctx = context(&vars);
        let mut packages = Vec::new();
        for (i, pk) in layer.packages.iter().enumerate() {
            match render(&format!("packages[{i}]"), pk, &ctx) {
                Ok(s) if s.trim().is_empty() => {}
                Ok(s) => packages.extend(s.split_whitespace().map(String::from)),
                Err(e) => p.push(&layer.file, &format!("packages[{i}]"), e),
            }
        }
        for f in &layer.files {
            let path = layer.dir.join("files").join(f);
            if path.extension().is_some_and(|e| e == "tera") && path.is_file() {
                match fs_err::read_to_string(&path) {
                    Ok(text) => {
                        if let Err(e) = render(&f.display().to_string(), &text, &ctx) {
                            p.push(&path, "", format!("template error: {e}"));
                        }
                    }
                    Err(e) => p.push(&path, "", format!("cannot read the template: {e}")),
                }
            }
        }
        let k = key::layer_key(&parent, &layer, &vars).map_err(|e| {
            SpecError(vec![crate::spec::Problem { file: layer.file.clone(), key: String::new(), message: e }])
        })?;
        parent = k.clone();
        layers.push(PlannedLayer { name: n.clone(), key: k, layer, packages, variables: vars });
    }
    check_containers(&layers, &loaded, &mut p);
    p.into_result()?;
    Ok(BuildPlan { image: image.name.clone(), spec: image.clone(), base, layers })
}

/// The layer that brings the container runtime (podman) and its store configuration.
pub const RUNTIME_LAYER: &str = "containers";

/// Containers and stacks across layers: unique container names, compose images that name a
/// container the layer can see, the runtime layer underneath, no port served twice.
fn check_containers(layers: &[PlannedLayer], loaded: &BTreeMap<String, Layer>, p: &mut Problems) {
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for l in layers {
        for c in &l.layer.containers {
            if let Some(other) = owners.insert(&c.name, &l.name) {
                p.push(&l.layer.file, &format!("containers.{}", c.name), format!("layer `{other}` declares a container `{}` too; container names are unique in an image", c.name));
            }
        }
    }
    // port → (layer, service)
    let mut ports: BTreeMap<u16, (String, String)> = BTreeMap::new();
    // container or volume name → (layer, what) : `a` + `b-web` and `a-b` + `web` meet here.
    let mut names: BTreeMap<String, (String, String)> = BTreeMap::new();
    for l in layers {
        let Some(stack) = &l.layer.stack else { continue };
        let made = stack
            .services
            .iter()
            .map(|s| ("container and unit", crate::spec::compose::container_name(&l.name, &s.name), format!("services.{}", s.name)))
            .chain(stack.volumes.iter().map(|v| ("volume", crate::spec::compose::volume_name(&l.name, v), format!("volumes.{v}"))));
        for (kind, name, key) in made {
            if let Some((ol, ok)) = names.insert(format!("{kind} {name}"), (l.name.clone(), key.clone())) {
                p.push(&stack.file, &key, format!("gives the {kind} name `{name}`, as `{ok}` of layer `{ol}` does: rename one"));
            }
        }
    }
    let mut subnets: BTreeMap<u8, &str> = BTreeMap::new();
    for l in layers {
        if let Some(stack) = &l.layer.stack
            && let Some(other) = subnets.insert(crate::spec::compose::stack_subnet(&l.name), &l.name)
        {
            p.push(&stack.file, "", format!("layers `{other}` and `{}` would get the same network (10.89.{}.0/24, from their names): rename one", l.name, crate::spec::compose::stack_subnet(&l.name)));
        }
    }
    for l in layers {
        let deps = closure(&l.name, loaded);
        if (!l.layer.containers.is_empty() || l.layer.stack.is_some()) && !deps.contains(RUNTIME_LAYER) {
            p.push(&l.layer.file, "depends", format!("layer `{}` has containers but does not depend on `{RUNTIME_LAYER}`, the layer that brings the container runtime", l.name));
        }
        let Some(stack) = &l.layer.stack else { continue };
        for s in &stack.services {
            let visible = deps.iter().flat_map(|d| &loaded[d].containers).any(|c| c.is_named_by(&s.image));
            if !visible {
                let names: Vec<&str> = deps.iter().flat_map(|d| &loaded[d].containers).map(|c| c.name.as_str()).collect();
                p.push(
                    &stack.file,
                    &format!("services.{}.image", s.name),
                    format!(
                        "`{}` is not a container of layer `{}` or of a layer it depends on (declare it under [containers.NAME] in {}; known: {})",
                        s.image,
                        l.name,
                        l.layer.file.display(),
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    ),
                );
            }
            // Each stack has its own network: only published ports meet on the box's.
            for (host, _) in &s.ports {
                if let Some((ol, os)) = ports.insert(*host, (l.name.clone(), s.name.clone())) {
                    p.push(&stack.file, &format!("services.{}.ports", s.name), format!("port {host} is already published by service `{os}` of layer `{ol}`: change one `HOST:CONTAINER` mapping"));
                }
            }
        }
    }
}

/// Depth-first visit: dependencies before the layer; cycles and unknown layers become problems.
#[allow(clippy::too_many_arguments)]
fn visit(
    name: &str,
    from_file: &Path,
    from_key: &str,
    dir: &Path,
    image: &Image,
    loaded: &mut BTreeMap<String, Layer>,
    order: &mut Vec<String>,
    visiting: &mut Vec<String>,
    p: &mut Problems,
) {
    if order.iter().any(|o| o == name) {
        return;
    }
    if let Some(pos) = visiting.iter().position(|v| v == name) {
        let mut cycle: Vec<&str> = visiting[pos..].iter().map(String::as_str).collect();
        cycle.push(name);
        p.push(from_file, from_key, format!("dependency cycle: {}", cycle.join(" -> ")));
        return;
    }
    let layer_dir: PathBuf = dir.join(name);
    if name.is_empty() || name.contains('/') || !layer_dir.join("layer.toml").is_file() {
        p.push(from_file, from_key, format!("unknown layer `{name}`: there is no {}", layer_dir.join("layer.toml").display()));
        return;
    }
    let layer = match loaded.get(name) {
        Some(l) => l.clone(),
        None => match Layer::load(&layer_dir, image.distro.name()) {
            Ok(l) => {
                loaded.insert(name.to_string(), l.clone());
                l
            }
            Err(e) => {
                p.0.extend(e.0);
                return;
            }
        },
    };
    visiting.push(name.to_string());
    for (i, d) in layer.depends.iter().enumerate() {
        visit(d, &layer.file, &format!("depends[{i}]"), dir, image, loaded, order, visiting, p);
    }
    visiting.pop();
    order.push(name.to_string());
}

/// A layer and all it depends on, transitively.
fn closure(name: &str, loaded: &BTreeMap<String, Layer>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![name.to_string()];
    while let Some(n) = stack.pop() {
        if out.insert(n.clone()) {
            stack.extend(loaded[&n].depends.iter().cloned());
        }
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "broken_tests.rs"]
mod broken_tests;
