-- Opt-in: errors from every diagnostic source (other language servers, linters) are
-- sent to dmem-lsp as `dmem/debugStep`, so its debug memory learns what went wrong.
-- Each error is sent once, after the diagnostics have settled for a moment.
local compat = require('dmem.compat')

local M = {}

M.settle_ms = 500
local sent = {} -- "uri:line:message" -> true
local pending = {} -- bufnr -> true
local timer = nil
local group = nil

local function own_namespaces()
  local own = {}
  for _, client in ipairs(compat.clients()) do
    local ok, namespace = pcall(vim.lsp.diagnostic.get_namespace, client.id)
    if ok and namespace then
      own[namespace] = true
    end
  end
  return own
end

function M.flush()
  local own = own_namespaces()
  for bufnr in pairs(pending) do
    local client = vim.api.nvim_buf_is_valid(bufnr) and compat.client(bufnr)
    if client then
      local uri = vim.uri_from_bufnr(bufnr)
      local path = vim.fn.fnamemodify(vim.api.nvim_buf_get_name(bufnr), ':~:.')
      for _, diagnostic in ipairs(vim.diagnostic.get(bufnr, { severity = vim.diagnostic.severity.ERROR })) do
        local key = string.format('%s:%d:%s', uri, diagnostic.lnum, diagnostic.message)
        if not own[diagnostic.namespace] and not sent[key] then
          sent[key] = true
          local source = diagnostic.source and ('[' .. diagnostic.source .. '] ') or ''
          local text = string.format('%s:%d: %s%s', path, diagnostic.lnum + 1, source, diagnostic.message)
          compat.notify(client, 'dmem/debugStep', { uri = uri, text = text, kind = 'diagnostic' })
        end
      end
    end
  end
  pending = {}
end

---Start (true) or stop (false) forwarding.
function M.enable(on)
  if group then
    vim.api.nvim_del_augroup_by_id(group)
    group = nil
  end
  if not on then
    return
  end
  timer = timer or compat.uv.new_timer()
  group = vim.api.nvim_create_augroup('dmem.forward', { clear = true })
  vim.api.nvim_create_autocmd('DiagnosticChanged', {
    group = group,
    callback = function(event)
      pending[event.buf] = true
      timer:stop()
      timer:start(M.settle_ms, 0, vim.schedule_wrap(M.flush))
    end,
  })
end

return M
