#!/usr/bin/env node
// Parse LogQL queries with @grafana/lezer-logql, the grammar Grafana's Loki query editor uses.
// stdin: a JSON array of query strings. stdout: a JSON array, one object per query:
//   errors:   [{from, to, text}]   syntax errors (the grammar's error nodes)
//   matchers: [{label, op, value, in}]   "in" is "selector" (stream selector, index labels) or
//             "filter" (a label filter stage: index labels or structured metadata)
//   grouping: [label]   labels named in by (...) / without (...)
//   lineFilters: [{op, value}]
//   stages:   the pipeline in order, each {line: [{op, value}]} or {label: TREE} where TREE is
//             {or: [TREE...]}, {and: [TREE...]}, {matcher: {label, op, value}} or {other: text}
//             (what a test needs to evaluate a query over log records)
import { readFileSync } from "node:fs";
import { parser } from "@grafana/lezer-logql";

function unquote(text) {
  if (text.startsWith("`")) return text.slice(1, -1);
  return JSON.parse(text);
}

function check(query) {
  const result = { query, errors: [], matchers: [], grouping: [], lineFilters: [], stages: [] };
  const text = (node) => query.slice(node.from, node.to);
  const matcher = (node) => {
    const label = node.getChild("Identifier");
    const op = node.getChild("Eq") || node.getChild("Neq") || node.getChild("Re") || node.getChild("Nre");
    const value = node.getChild("String");
    return label && op && value ? { label: text(label), op: text(op), value: unquote(text(value)) } : null;
  };
  const labelTree = (node) => {
    const parts = node.getChildren("LabelFilter");
    if (parts.length) {
      return { [node.getChild("Or") ? "or" : "and"]: parts.map(labelTree) };
    }
    const found = node.getChild("Matcher") && matcher(node.getChild("Matcher"));
    return found ? { matcher: found } : { other: text(node) };
  };
  parser.parse(query).iterate({
    enter(ref) {
      const node = ref.node;
      if (ref.type.isError) {
        result.errors.push({ from: ref.from, to: ref.to, text: query.slice(ref.from, ref.to + 10) });
      } else if (ref.name === "PipelineStage") {
        const lines = node.getChild("LineFilters");
        const labels = node.getChild("LabelFilter");
        if (lines) {
          const filters = [];
          lines.toTree().iterate({
            enter(sub) {
              if (sub.name !== "LineFilter") return;
              const f = sub.node;
              const at = (child) => query.slice(lines.from + child.from, lines.from + child.to);
              filters.push({ op: at(f.getChild("Filter")), value: unquote(at(f.getChild("String"))) });
            },
          });
          result.stages.push({ line: filters });
        } else if (labels) {
          result.stages.push({ label: labelTree(labels) });
        } else {
          result.stages.push({ other: text(node) });
        }
      } else if (ref.name === "Matcher") {
        let place = "filter";
        for (let up = node.parent; up; up = up.parent) {
          if (up.name === "Selector") { place = "selector"; break; }
          if (up.name === "LabelFilter") break;
        }
        const found = matcher(node);
        if (found) result.matchers.push({ ...found, in: place });
      } else if (ref.name === "Grouping") {
        const labels = node.getChild("Labels");
        for (let child = labels ? labels.firstChild : null; child; child = child.nextSibling) {
          if (child.name === "Identifier") result.grouping.push(text(child));
        }
      } else if (ref.name === "LineFilter") {
        const op = node.getChild("Filter");
        const value = node.getChild("String");
        if (op && value) result.lineFilters.push({ op: text(op), value: unquote(text(value)) });
      }
    },
  });
  return result;
}

const queries = JSON.parse(readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(queries.map(check), null, 1) + "\n");
