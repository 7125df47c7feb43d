// deskport console conveniences. Every page works without this file: it only hides fields
// that do not apply, fills "use my address" without a round trip, warns before SSH or RDP is
// opened to the whole internet, copies connect commands and submits the project switcher.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("add-rule");
  if (form) addRule(form);
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", () => {
      const input = document.getElementById(button.dataset.copy);
      if (!input) return;
      input.select();
      if (navigator.clipboard) navigator.clipboard.writeText(input.value).catch(() => {});
      button.textContent = "Copied";
    });
  }
  const project = document.getElementById("project-switch");
  if (project) {
    const submit = project.querySelector("button");
    if (submit) submit.hidden = true;
    project.querySelector("select").addEventListener("change", () => project.submit());
  }
});

function addRule(form) {
  const kinds = JSON.parse(form.dataset.kinds);
  const $ = (name) => form.elements.namedItem(name);
  const show = (id, on) => {
    const el = document.getElementById(id);
    if (el) el.hidden = !on;
  };
  const update = () => {
    const kind = kinds[$("template").value] || "fixed";
    const ports = kind === "ports";
    show("f-port_mode", ports);
    const range = ports && $("port_mode").value === "range";
    show("f-port", ports && !range);
    show("f-port_range_min", range);
    show("f-port_range_max", range);
    show("f-icmp_type", kind === "icmp");
    show("f-icmp_code", kind === "icmp");
    show("f-protocol", kind === "other");
    const sg = $("remote").value === "sg";
    show("f-remote_ip_prefix", !sg);
    show("f-remote_group_id", sg);
    const cidr = $("remote_ip_prefix").value.trim();
    const risky = ["ssh", "rdp"].includes($("template").value) && !sg && (cidr === "0.0.0.0/0" || cidr === "::/0");
    show("open-warning", risky);
  };
  for (const name of ["template", "port_mode", "remote", "remote_ip_prefix"]) {
    $(name).addEventListener("input", update);
    $(name).addEventListener("change", update);
  }
  const mine = document.getElementById("use-my-address");
  if (mine) {
    mine.addEventListener("click", (event) => {
      event.preventDefault();
      $("remote").value = "cidr";
      $("remote_ip_prefix").value = form.dataset.myCidr;
      $("ethertype").value = form.dataset.myCidr.includes(":") ? "IPv6" : "IPv4";
      update();
    });
  }
  update();
}
